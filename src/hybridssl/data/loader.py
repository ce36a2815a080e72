"""Seeded, resumable batch order (shared by both data paths) and the iterator over in-memory images.

Each epoch's order is a permutation drawn from (seed, epoch); global batch i is the slice
[i*G, (i+1)*G) of it and rank r takes its r-th part, so N ranks with batch B see exactly what one
process with batch N*B sees. The position inside the epoch counts *processed* batches (the engine
calls `advance()` after each one), not fetched ones, so prefetching cannot shift a resumed run.
The engine saves `state_dict()` in every checkpoint and restores it on resume (engine/callbacks.py).

With `global_images`, each batch's "images" are those of the whole global batch, and "offset" says
where this rank's rows start in it: the engine augments all of them with a seed shared by the ranks
and keeps its rows, so the views of a sample do not depend on the number of ranks.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor


class EpochBatches:
    """The position in training (epoch, batches processed) and each epoch's seeded order of samples."""

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 global_images: bool = False) -> None:  # fmt: skip
        if num_samples < batch_size * world_size:
            raise ValueError(
                f"the dataset has {num_samples} images, fewer than one global batch "
                f"({world_size} x {batch_size}); lower batch_size"
            )
        self.num_samples = num_samples
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.global_images = global_images and world_size > 1
        self.epoch = 0
        self.consumed = 0

    def __len__(self) -> int:
        return self.num_samples // (self.batch_size * self.world_size)

    def set_epoch(self, epoch: int) -> None:
        """Jumps to the start of `epoch`. The engine never calls it: the loader counts its own epochs
        (a new one starts when an iteration begins with the epoch used up), because Lightning's epoch
        counter drifts across repeated resumes (measured: after three resumes it asked for epoch 1
        during epoch 3). Without a `sampler` attribute, Lightning does not call it either."""
        if epoch != self.epoch:
            self.epoch, self.consumed = epoch, 0

    def epoch_order(self) -> Tensor:
        """len(self) x world_size x batch_size sample indices for the current epoch."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.num_samples, generator=generator)
        return perm[: len(self) * self.world_size * self.batch_size].view(len(self), self.world_size, -1)

    def start_iteration(self) -> None:
        """A new epoch starts when an iteration begins with the current one used up (also when resumed
        from an end-of-epoch checkpoint)."""
        if self.consumed >= len(self):
            self.epoch, self.consumed = self.epoch + 1, 0

    @property
    def offset(self) -> int:
        """Where this rank's rows start in a batch that holds the whole global batch."""
        return self.rank * self.batch_size if self.global_images else 0

    def remaining(self) -> Iterator[tuple[Tensor, Tensor]]:
        """(this rank's sample ids, the ids whose images it loads) for the rest of the current epoch."""
        order = self.epoch_order()
        for i in range(self.consumed, len(self)):
            yield order[i, self.rank], (order[i].flatten() if self.global_images else order[i, self.rank])

    @property
    def position(self) -> int:
        """Batches processed since training began: the index of the step that processes the next one."""
        if self.consumed >= len(self):
            return (self.epoch + 1) * len(self)
        return self.epoch * len(self) + self.consumed

    def advance(self) -> None:
        """Called by the engine after each processed batch."""
        self.consumed += 1

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed, "global_batch": self.batch_size * self.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restores the position; saved with another global batch, the position in samples is kept
        (rounded down to whole batches), so no sample of the epoch is skipped."""
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
        saved = int(state.get("global_batch", self.batch_size * self.world_size))
        if saved != self.batch_size * self.world_size:
            self.consumed = self.consumed * saved // (self.batch_size * self.world_size)


class InMemoryLoader(EpochBatches):
    """Batches of stored uint8 images, indexed on their device."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor | None,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
        global_images: bool = False,
    ) -> None:
        super().__init__(len(images), batch_size, seed, rank, world_size, global_images)
        self.images = images if device is None else images.to(device)
        missing = torch.full((len(images),), -1, dtype=torch.int64)
        self.labels = (labels if labels is not None else missing).to(self.images.device)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        self.start_iteration()
        device = self.images.device
        for ids, shown in self.remaining():
            ids, shown = ids.to(device), shown.to(device)
            yield {"images": self.images[shown], "ids": ids, "labels": self.labels[ids], "offset": self.offset}
