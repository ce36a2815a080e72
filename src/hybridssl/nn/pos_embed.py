"""Fixed 2-D sin-cos position embeddings (MAE convention, docs/methods.md Appendix A1), and the
resampling of any position table to another grid (checkpoints used at another image size)."""

from __future__ import annotations

import torch
from timm.layers import resample_abs_pos_embed
from torch import Tensor


def sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """[sin(p * w_i) | cos(p * w_i)] with w_i = 10000^(-i / (dim/2)); returns len(positions) x dim."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, grid_size: int, cls_token: bool = True) -> Tensor:
    """(cls + grid^2) x dim table; first half of the channels encodes the column, second half the row.

    Patches are row-major; the CLS row is all zeros so the CLS token carries no position.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding width must be divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    table = torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1)
    if cls_token:
        table = torch.cat([torch.zeros(1, dim, dtype=table.dtype), table], dim=0)
    return table.float()


def sincos_scalar(dim: int, values: Tensor) -> Tensor:
    """Timestep-style embedding of one scalar per sample (CAN's noise level, docs/methods.md A9).

    Frequencies f_i = exp(-ln(10000) * i / (dim/2 - 1)); returns B x dim = [sin(v f) | cos(v f)].
    """
    half = dim // 2
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(half, device=values.device) / (half - 1))
    angles = values.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def resample_grid(table: Tensor, grid_size: int) -> Tensor:
    """A [1 x] (1 + g^2) x D position table (CLS row first) resampled to
    (1 + grid_size^2) rows with timm's bicubic resampling, so an encoder trained at one image size
    can run at another (a 224 px ViT/16 at 112 px: 14 x 14 -> 7 x 7). The CLS row is kept as is."""
    batched = table if table.dim() == 3 else table.unsqueeze(0)
    out = resample_abs_pos_embed(batched, [grid_size, grid_size], num_prefix_tokens=1)
    return out if table.dim() == 3 else out[0]
