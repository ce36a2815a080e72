"""FIFO feature queue: NNCLR / MAE-CT nearest-neighbour support set and MoCo-style negatives.

All state (features, sample ids, labels, pointer) is in buffers, so a checkpoint carries it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybridssl.nn.batch_random import batch_randint
from hybridssl.nn.distributed import gather_no_grad


class FeatureQueue(nn.Module):
    """A FIFO of features (with the ids and labels they came from) in buffers, so it survives a resume.

    >>> queue = FeatureQueue(size=65536, dim=256)
    >>> positives, index = queue.nearest(projections, ids)   # NNCLR / MAE-CT: nearest stored feature, own sample excluded
    >>> queue.enqueue(projections.detach(), ids)    # once per optimizer step (after_step)
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be positive, got {size}")
        # random unit vectors (MAE-CT): early lookups return noise rather than zeros
        self.register_buffer("features", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ids", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.features.shape[0]

    def enqueue(self, features: Tensor, ids: Tensor, labels: Tensor | None = None) -> None:
        """Writes the batch of every rank (gathered, rank order) at the pointer, wrapping around."""
        with torch.no_grad():
            labels = labels if labels is not None else torch.full_like(ids, -1)
            features = gather_no_grad(F.normalize(features.detach().float(), dim=1))
            ids, labels = gather_no_grad(ids), gather_no_grad(labels)
            n = features.shape[0]
            if n > self.size:
                raise ValueError(f"a global batch of {n} does not fit a queue of {self.size}")
            slots = (self.ptr + torch.arange(n, device=self.ptr.device)) % self.size
            self.features[slots] = features.to(self.features.dtype)
            self.ids[slots] = ids
            self.labels[slots] = labels
            self.ptr.copy_((self.ptr + n) % self.size)

    def nearest(self, query: Tensor, ids: Tensor | None = None, topk: int = 1) -> tuple[Tensor, Tensor]:
        """Neighbour of each (L2-normalized) query: the most similar entry, or one drawn uniformly from
        the `topk` most similar. Entries holding the query's own sample id are never returned.

        Returns (neighbour features B x d, their queue indices B).
        """
        with torch.no_grad():
            sims = F.normalize(query.detach().float(), dim=1) @ self.features.float().T
            if ids is not None:
                sims = sims.masked_fill(self.ids.unsqueeze(0) == ids.unsqueeze(1), float("-inf"))
            if topk <= 1:
                index = sims.argmax(dim=1)
            else:
                candidates = sims.topk(min(topk, self.size), dim=1).indices
                pick = batch_randint(candidates.shape[1], len(query), 1, device=query.device)
                index = candidates.gather(1, pick).squeeze(1)
            return self.features[index], index

    def nn_accuracy(self, index: Tensor, labels: Tensor) -> Tensor:
        """Share of neighbours with the query's label (monitoring only; labels never reach a loss)."""
        known = labels >= 0
        return (self.labels[index][known] == labels[known]).float().mean() if known.any() else labels.new_zeros((), dtype=torch.float)
