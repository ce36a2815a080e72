"""Mini-batch indices for the probes and fine-tuning, also for training sets smaller than one batch."""

from __future__ import annotations

import torch
from torch import Tensor


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """One epoch of index batches, each of exactly `batch_size`.

    An epoch is n // batch_size steps over a fresh permutation (the last partial batch dropped). A set
    smaller than one batch (low-shot: 10 images) gives one step whose batch repeats the set in several
    permutations: the lr then keeps its batch / 256 scaling, and every image is seen equally often.
    """
    if n <= 0:
        raise ValueError("cannot draw batches from an empty set")
    if n >= batch_size:
        order = torch.randperm(n, generator=generator)
        return list(order[: (n // batch_size) * batch_size].view(-1, batch_size))
    repeats = -(-batch_size // n)
    order = torch.cat([torch.randperm(n, generator=generator) for _ in range(repeats)])
    return [order[:batch_size]]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // batch_size)
