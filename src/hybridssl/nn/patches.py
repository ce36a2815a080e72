"""Images <-> patch sequences, in one place so targets, decoders and pictures agree on the order."""

from __future__ import annotations

from torch import Tensor


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """B x C x H x W -> B x N x (p*p*C), patches row-major, each flattened as (p, p, C) like MAE."""
    b, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image {h}x{w} is not divisible by patch size {p}")
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: Tensor, patch_size: int, channels: int, height: int, width: int | None = None) -> Tensor:
    """Inverse of `patchify`."""
    width = height if width is None else width
    b = patches.shape[0]
    p = patch_size
    gh, gw = height // p, width // p
    x = patches.reshape(b, gh, gw, p, p, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, height, width)


def normalize_patches(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """MAE's norm-pix target: each patch minus its mean, divided by sqrt(unbiased var + eps)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, unbiased=True)
    return (patches - mean) / (var + eps).sqrt()


def pixel_target(images: Tensor, patch_size: int, norm_pix: bool) -> Tensor:
    """The reconstruction target of masked methods: patches, per-patch normalized when `norm_pix`."""
    patches = patchify(images, patch_size)
    return normalize_patches(patches) if norm_pix else patches
