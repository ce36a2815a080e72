"""What is near what, by cosine similarity: nearest neighbours of queries and near-duplicate pairs.

Computed in row blocks, so N embeddings take N x block similarities at a time, not N x N.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.nn.functional import normalize

BLOCK = 1024


def unit_rows(vectors: np.ndarray | Tensor) -> Tensor:
    x = torch.as_tensor(vectors).detach().float().cpu()
    return normalize(x.reshape(1, -1) if x.dim() == 1 else x, dim=1)  # one vector: one row


def nearest(queries: np.ndarray | Tensor, bank: np.ndarray | Tensor, k: int,
            exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(similarities, indices), each len(queries) x k, most similar first. `exclude[i]`: a row of the
    bank query i may not return (itself, when the queries are bank rows)."""
    q, b = unit_rows(queries), unit_rows(bank)
    k = min(k, len(b) - (exclude is not None))
    sims, idx = [], []
    for start in range(0, len(q), BLOCK):
        scores = q[start : start + BLOCK] @ b.T
        if exclude is not None:
            rows = torch.arange(len(scores))
            scores[rows, torch.as_tensor(exclude[start : start + BLOCK])] = -float("inf")
        top = scores.topk(k, dim=1)
        sims.append(top.values)
        idx.append(top.indices)
    return torch.cat(sims).numpy(), torch.cat(idx).numpy()


def near_duplicates(vectors: np.ndarray | Tensor, pairs: int) -> list[tuple[int, int, float]]:
    """The `pairs` most similar pairs (i < j) of distinct rows, most similar first."""
    x = unit_rows(vectors)
    if len(x) < 2:
        return []
    best: list[tuple[float, int, int]] = []
    for start in range(0, len(x), BLOCK):
        scores = x[start : start + BLOCK] @ x.T
        rows = torch.arange(start, start + len(scores))
        scores[torch.arange(len(x))[None, :] <= rows[:, None]] = -float("inf")  # each pair once: j > i
        per_row = scores.topk(min(pairs, scores.shape[1]), dim=1)  # a row's best few, then the block's best
        top = per_row.values.flatten().topk(min(pairs, per_row.values.numel()))
        for value, flat in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            row, rank = divmod(flat, per_row.values.shape[1])
            if value > -float("inf"):
                best.append((value, start + row, int(per_row.indices[row, rank])))
    best.sort(key=lambda t: -t[0])
    return [(i, j, s) for s, i, j in best[:pairs]]
