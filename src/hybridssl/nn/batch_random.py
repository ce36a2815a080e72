"""Per-sample random draws that do not depend on how the global batch is split across ranks.

A mask or a top-k pick drawn with `torch.rand(local_batch, ...)` gives rank 1 of a two-process run
other numbers than samples B..2B of a one-process run with the same global batch, so the two runs
train differently. Inside `shared_stream(seed)` (the engine opens one per training step, with the
same seed on every rank) the draws below are made for the whole global batch from one generator that
every rank advances identically, and each rank keeps its own rows: N ranks with batch B then draw
exactly what one process with batch N x B draws. Outside a shared stream (unit tests, evaluation,
pictures) they are plain draws from the global torch generator.

Every rank must make the same sequence of shared draws with the same shapes, which holds for the
engine's equal per-rank batches. Row i is sample i of the rank's batch: draw once per view (B rows),
not once for views stacked into one tensor (2B rows: [view 1 of the rank's samples, view 2 ...]
interleaves differently from the one-process layout, so those draws match only in distribution).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from hybridssl.nn.distributed import rank, world_size

_seed: int | None = None
_generators: dict[torch.device, torch.Generator] = {}


@contextmanager
def shared_stream(seed: int) -> Iterator[None]:
    """Draws in this block come from a generator seeded with `seed` (one per device, created lazily)."""
    global _seed
    previous, saved = _seed, dict(_generators)
    _seed = seed
    _generators.clear()
    try:
        yield
    finally:
        _seed = previous
        _generators.clear()
        _generators.update(saved)


def _generator(device: torch.device) -> torch.Generator:
    if device not in _generators:
        _generators[device] = torch.Generator(device=device).manual_seed(_seed)
    return _generators[device]


def _rows(batch: int, draw) -> Tensor:
    """This rank's `batch` rows of `draw(world x batch, generator)`."""
    world = world_size()
    return draw(world * batch)[rank() * batch : (rank() + 1) * batch] if world > 1 else draw(batch)


def batch_rand(batch: int, *shape: int, device: torch.device | str = "cpu") -> Tensor:
    """Uniform [0, 1) values, `batch` x shape, one row per sample of this rank's batch."""
    device = torch.device(device)
    if _seed is None:
        return torch.rand(batch, *shape, device=device)
    gen = _generator(device)
    return _rows(batch, lambda n: torch.rand(n, *shape, device=device, generator=gen))


def batch_randint(high: int, batch: int, *shape: int, device: torch.device | str = "cpu") -> Tensor:
    """Integers in [0, high), `batch` x shape, one row per sample of this rank's batch."""
    device = torch.device(device)
    if _seed is None:
        return torch.randint(0, high, (batch, *shape), device=device)
    gen = _generator(device)
    return _rows(batch, lambda n: torch.randint(0, high, (n, *shape), device=device, generator=gen))
