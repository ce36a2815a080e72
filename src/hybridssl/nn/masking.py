"""Token masks with the MAE conventions (docs/methods.md Appendix A2, A3).

`mask` is B x N in original patch order with 1 = removed, 0 = kept. `ids_keep` lists the kept patch
indices (B x Nv); `ids_restore` is the inverse of the shuffle "kept first, removed after", so a decoder
can put [kept tokens, mask tokens] back into patch order with one gather. The noise comes from
`batch_random`, so a sample's mask does not depend on how the global batch is split across ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hybridssl.nn.batch_random import batch_rand, batch_randint


@dataclass(frozen=True)
class Mask:
    """Which patches an encoder sees: `ids_keep` (visible, shuffled order), `ids_restore` (puts the
    shuffled tokens back in patch order) and `mask` (1 = removed, patch order: what a loss covers).

    >>> m = random_mask(batch=8, num_patches=196, ratio=0.75)
    >>> m.ids_keep.shape, m.mask.sum(1)      # (8, 49), 147 removed per image
    """

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
    noise = batch_rand(batch, num_patches, device=device)
    return _from_shuffle(torch.argsort(noise, dim=1), num_keep)


def block_mask(batch: int, grid_size: int, ratio: float, unit: int = 2, device: torch.device | str = "cpu") -> Mask:
    """CMAE masking: the grid is cut into unit x unit blocks and whole blocks are kept or removed.

    Keeps int(N / unit^2 * (1 - ratio)) blocks, so the removed fraction is slightly above `ratio`
    (0.653 for 0.65 on a 14x14 grid). A grid side not divisible by `unit` (7x7 = 28 px / patch 4) is
    handled without padding the image: the blocks tile a (unit * floor(G / unit))-sided window placed
    at a random offset per image, and the patches outside the window are removed (on 7x7 at 0.65: 4
    blocks = 16 of 49 patches kept, 67.3% removed; every patch can be kept, border rows and columns
    half as often as inner ones).
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    if grid_size < unit:
        raise ValueError(f"block masking needs a patch grid of at least {unit}x{unit}, got {grid_size}x{grid_size}")
    units_side = grid_size // unit
    num_units = units_side**2
    keep_units = min(num_units, max(1, int(grid_size**2 / unit**2 * (1 - ratio))))
    unit_rank = torch.argsort(torch.argsort(batch_rand(batch, num_units, device=device), dim=1), dim=1)
    offset = batch_randint(grid_size % unit + 1, batch, 2, 1, 1, device=device)  # window origin (row, col)
    steps = torch.arange(grid_size, device=device)
    rows = steps.view(1, -1, 1) - offset[:, 0]  # B x G x 1, row inside the window
    cols = steps.view(1, 1, -1) - offset[:, 1]  # B x 1 x G
    span = units_side * unit
    inside = ((rows >= 0) & (rows < span) & (cols >= 0) & (cols < span)).flatten(1)  # B x N
    rows, cols = rows.clamp(0, span - 1), cols.clamp(0, span - 1)
    unit_of_patch = ((rows // unit) * units_side + cols // unit).flatten(1)  # B x N
    within_unit = ((rows % unit) * unit + cols % unit).flatten(1)  # B x N
    score = unit_rank.gather(1, unit_of_patch) * unit * unit + within_unit  # kept blocks rank lowest
    score = score.masked_fill(~inside, num_units * unit * unit)
    return _from_shuffle(torch.argsort(score, dim=1), keep_units * unit * unit)


def no_mask(batch: int, num_patches: int, device: torch.device | str = "cpu") -> Mask:
    """Identity mask (every patch visible), for branches that see the full view."""
    ids = torch.arange(num_patches, device=device).expand(batch, num_patches)
    return Mask(ids_keep=ids, ids_restore=ids, mask=torch.zeros(batch, num_patches, device=device))
