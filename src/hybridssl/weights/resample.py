"""Position tables resampled to another grid, so a file trained at one image size runs at another
(a 224 px ViT/16 at 160 or 112 px) with timm's bicubic resampling (nn/pos_embed.resample_grid)."""

from __future__ import annotations

import math

from torch import Tensor

from hybridssl.nn.pos_embed import resample_grid


def resample_tables(state: dict[str, Tensor], own: dict[str, Tensor]) -> list[tuple[int, int]]:
    """Resamples, in place, every `*pos_embed` table of `state` whose grid differs from the one of the
    same name in `own` (same width); returns the (old, new) grid sides."""
    changes = []
    for key, table in list(state.items()):
        target = own.get(key)
        if not key.endswith("pos_embed") or target is None or table.shape == target.shape:
            continue
        old, new = math.isqrt(table.shape[-2] - 1), math.isqrt(target.shape[-2] - 1)
        if table.dim() == target.dim() and table.shape[-1] == target.shape[-1] and old * old == table.shape[-2] - 1:
            state[key] = resample_grid(table, new)
            changes.append((old, new))
    return changes


def resampling_note(changes: list[tuple[int, int]]) -> str:
    grids = ", ".join(dict.fromkeys(f"{a}x{a} -> {b}x{b}" for a, b in changes))
    return f"position embeddings resampled ({grids} grid, timm's bicubic resampling)"
