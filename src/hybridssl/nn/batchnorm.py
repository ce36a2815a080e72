"""BatchNorm whose training statistics are those of the global batch, on any device.

torch's SyncBatchNorm does this on GPUs only (DDP refuses it on CPU: "SyncBatchNorm layers only work
with GPU modules", measured), so the projector and predictor heads of SimCLR, MoCo v3, NNCLR, MAE-CT,
CMAE and MACRL would see per-rank statistics in a CPU run. `GlobalBatchNorm` sums the per-channel
count, sum and sum of squares over the ranks (one all-reduce, differentiable), normalizes with the
global mean and biased variance and updates the running statistics with the unbiased one, as
BatchNorm does on one process with the global batch. It keeps BatchNorm's state-dict keys, so its
checkpoints load into plain BatchNorm layers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hybridssl.nn.distributed import all_reduce_sum_with_grad, world_size


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D)")

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        self._check_input_dim(x)
        dims = [d for d in range(x.dim()) if d != 1]
        local = x.float()
        count = torch.full((1,), local.numel() / local.shape[1], device=x.device)
        stats = all_reduce_sum_with_grad(torch.cat([count, local.sum(dims), (local * local).sum(dims)]))
        n, channels = stats[0], x.shape[1]
        mean = stats[1 : 1 + channels] / n
        var = (stats[1 + channels :] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                unbiased = var.detach() * n / (n - 1).clamp_min(1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        shape = [1, channels] + [1] * (x.dim() - 2)
        y = (local - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_to_global_batchnorm(module: nn.Module) -> nn.Module:
    """Replaces every BatchNorm layer (1d, 2d, 3d) by a GlobalBatchNorm sharing its parameters and buffers."""
    if not isinstance(module, nn.modules.batchnorm._BatchNorm) or isinstance(module, (GlobalBatchNorm, nn.SyncBatchNorm)):
        for name, child in module.named_children():
            module.add_module(name, convert_to_global_batchnorm(child))
        return module
    bn = module
    converted = GlobalBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    if bn.affine:
        converted.weight, converted.bias = bn.weight, bn.bias
    if bn.track_running_stats:
        converted.running_mean, converted.running_var = bn.running_mean, bn.running_var
        converted.num_batches_tracked = bn.num_batches_tracked
    converted.training = bn.training
    return converted
