"""Token masks with the MAE conventions (methods.md Appendix A2, A3).

`mask` is B x N in original patch order with 1 = removed, 0 = kept. `ids_keep` lists the kept patch
indices (B x Nv); `ids_restore` is the inverse of the shuffle "kept first, removed after", so a decoder
can put [kept tokens, mask tokens] back into patch order with one gather.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Mask:
    ids_keep: Tensor  # B x Nv (int64)
    ids_restore: Tensor  # B x N (int64)
    mask: Tensor  # B x N (float, 1 = removed)

    @property
    def num_visible(self) -> int:
        return self.ids_keep.shape[1]


def gather_tokens(tokens: Tensor, ids: Tensor) -> Tensor:
    """tokens B x N x D, ids B x M -> B x M x D."""
    return torch.gather(tokens, 1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def _from_shuffle(ids_shuffle: Tensor, num_keep: int) -> Mask:
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(ids_shuffle.shape, device=ids_shuffle.device)
    mask[:, :num_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return Mask(ids_keep=ids_shuffle[:, :num_keep], ids_restore=ids_restore, mask=mask)


def random_mask(batch: int, num_patches: int, ratio: float, device: torch.device | str = "cpu") -> Mask:
    """Per-sample uniform masking; keeps int(N * (1 - ratio)) patches (at least one)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    num_keep = max(1, int(num_patches * (1 - ratio)))
    noise = torch.rand(batch, num_patches, device=device)
    return _from_shuffle(torch.argsort(noise, dim=1), num_keep)


def block_mask(batch: int, grid_size: int, ratio: float, unit: int = 2, device: torch.device | str = "cpu") -> Mask:
    """CMAE masking: the grid is cut into unit x unit blocks and whole blocks are kept or removed.

    Keeps int(U * (1 - ratio)) of the U blocks, so the removed fraction is slightly above `ratio`
    (0.653 for 0.65 on a 14x14 grid). Needs a grid side divisible by `unit`.
    """
    if grid_size % unit:
        raise ValueError(f"block masking needs a patch grid divisible by {unit}, got {grid_size}x{grid_size}")
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    units_side = grid_size // unit
    num_units = units_side**2
    keep_units = max(1, int(num_units * (1 - ratio)))
    unit_rank = torch.argsort(torch.argsort(torch.rand(batch, num_units, device=device), dim=1), dim=1)
    rows = torch.arange(grid_size, device=device)[:, None].expand(grid_size, grid_size)
    cols = torch.arange(grid_size, device=device)[None, :].expand(grid_size, grid_size)
    unit_of_patch = ((rows // unit) * units_side + cols // unit).flatten()  # N
    within_unit = ((rows % unit) * unit + cols % unit).flatten()  # N
    score = unit_rank[:, unit_of_patch] * unit * unit + within_unit  # B x N, kept blocks rank lowest
    return _from_shuffle(torch.argsort(score, dim=1), keep_units * unit * unit)


def no_mask(batch: int, num_patches: int, device: torch.device | str = "cpu") -> Mask:
    """Identity mask (every patch visible), for branches that see the full view."""
    ids = torch.arange(num_patches, device=device).expand(batch, num_patches)
    return Mask(ids_keep=ids, ids_restore=ids, mask=torch.zeros(batch, num_patches, device=device))
