"""Loss functions shared by the methods; each is a plain function of tensors."""

from __future__ import annotations

from torch import Tensor


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """MAE loss: per-patch MSE averaged over all removed patches of the batch (methods.md 1c).

    pred, target: B x N x P; mask: B x N with 1 = removed (the patches the loss is computed on).
    """
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Per-patch mean absolute error averaged over the patches where `mask` is 1 (MACRL)."""
    per_patch = (pred.float() - target.float()).abs().mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)
