"""Loss functions shared by the methods; each is a plain function of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hybridssl.nn.distributed import gather_with_grad, gather_no_grad, rank
from hybridssl.nn.patches import normalize_patches


def fp32(like: Tensor) -> torch.autocast:
    """Autocast off around a contrastive loss: its inputs are cast to fp32 and its logits stay fp32
    under bf16-mixed training (autocast would otherwise run the similarity matmul in bf16, whose
    8-bit mantissa costs ~0.05 of a logit at tau 0.07; MAE-CT's code notes the same). A `with` block
    rather than a decorator, so that mutation testing reaches the losses (docs/testing.md)."""
    return torch.autocast(like.device.type, enabled=False)


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """MAE loss: per-patch MSE averaged over all removed patches of the batch (docs/methods.md 1c).

    pred, target: B x N x P; mask: B x N with 1 = removed (the patches the loss is computed on).
    """
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Per-patch mean absolute error averaged over the patches where `mask` is 1 (MACRL)."""
    per_patch = (pred.float() - target.float()).abs().mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


def noise_mse(pred: Tensor, noise: Tensor, mask: Tensor, normalize: bool = True) -> Tensor:
    """CAN's denoising loss (docs/methods.md 4c): per-patch MSE between the prediction and the noise that
    was added to the input, averaged over the *visible* patches (mask 0; the removed ones carry the
    reconstruction loss instead).

    noise: the added noise, patchified (B x N x P). `normalize` standardizes each patch of it like the
    norm-pix target (mean 0, unit variance), so the target has unit scale whatever the noise level;
    without it the raw noise (sigma <= 0.05) gives a loss of order sigma^2.
    """
    target = normalize_patches(noise.float()) if normalize else noise
    return masked_mse(pred, target, 1.0 - mask)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> Tensor:
    """SimCLR's NT-Xent over the 2G views of the global batch (docs/methods.md 6.3c).

    Each local view is an anchor; its positive is the other view of the same image; every other view
    of every rank is a negative (gathered with gradient). The anchor itself is excluded.
    Example: `loss = nt_xent(projector(encoder(x1)), projector(encoder(x2)), 0.1)`.
    """
    with fp32(z1):
        batch = z1.shape[0]
        z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
        candidates = torch.cat([gather_with_grad(z1), gather_with_grad(z2)])  # 2G x d
        global_batch = candidates.shape[0] // 2
        own = torch.arange(batch, device=z1.device) + rank() * batch
        anchors = torch.cat([z1, z2])  # 2B x d
        self_index = torch.cat([own, own + global_batch])
        positive = torch.cat([own + global_batch, own])
        logits = anchors @ candidates.T / temperature
        logits = logits.masked_fill(F.one_hot(self_index, 2 * global_batch).bool(), float("-inf"))
        return F.cross_entropy(logits, positive)


def info_nce(query: Tensor, keys: Tensor, temperature: float, scale: float = 1.0) -> Tensor:
    """InfoNCE of local queries against the keys of the global batch (MoCo v3, CMAE).

    Keys carry no gradient (momentum branch) and are gathered from every rank; the positive of query i
    is the key of the same image. MoCo v3 and CMAE multiply by `scale = 2 * temperature`.
    """
    with fp32(query):
        q = F.normalize(query.float(), dim=1)
        k = gather_no_grad(F.normalize(keys.detach().float(), dim=1))
        labels = torch.arange(q.shape[0], device=q.device) + rank() * q.shape[0]
        return scale * F.cross_entropy(q @ k.T / temperature, labels)


def info_nce_queue(query: Tensor, key: Tensor, negatives: Tensor, temperature: float) -> Tensor:
    """MoCo v2 InfoNCE: the positive is the key of the same image, negatives come from a memory bank."""
    with fp32(query):
        q = F.normalize(query.float(), dim=1)
        k = F.normalize(key.detach().float(), dim=1)
        positive = (q * k).sum(dim=1, keepdim=True)
        logits = torch.cat([positive, q @ negatives.detach().float().T], dim=1) / temperature
        return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def nnclr(prediction: Tensor, neighbour: Tensor, temperature: float) -> Tensor:
    """One direction of the NNCLR / MAE-CT loss (docs/methods.md 2c).

    Rows are the (no-gradient) neighbours of one view, columns the predictions of the other view for
    every image of the global batch (gathered with gradient); the target of row i is image i.
    The symmetric loss is `(nnclr(p1, nn2, t) + nnclr(p2, nn1, t)) / 2`.
    """
    with fp32(prediction):
        p = gather_with_grad(F.normalize(prediction.float(), dim=1))
        n = F.normalize(neighbour.detach().float(), dim=1)
        labels = torch.arange(n.shape[0], device=n.device) + rank() * n.shape[0]
        return F.cross_entropy(n @ p.T / temperature, labels)
