"""Weighted k-NN classifier on cosine similarity (DINO / MAE-CT protocol, docs/methods.md A8)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def nearest(queries: Tensor, bank: Tensor, k: int, bank_chunk: int) -> tuple[Tensor, Tensor]:
    """(similarities, indices) of the k largest `queries @ bank.T` per row, one bank chunk at a time."""
    best_sims = best_idx = None
    for start in range(0, len(bank), bank_chunk):
        block = queries @ bank[start : start + bank_chunk].T
        sims, idx = block.topk(min(k, block.shape[1]), dim=1)
        idx += start
        if best_sims is not None:
            sims, order = torch.cat([best_sims, sims], 1).topk(min(k, best_sims.shape[1] + sims.shape[1]), dim=1)
            idx = torch.cat([best_idx, idx], 1).gather(1, order)
        best_sims, best_idx = sims, idx
    return best_sims, best_idx


def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    ks: Sequence[int] = (20,),
    temperature: float = 0.07,
    standardize: bool = False,
    chunk: int = 1024,
    bank_chunk: int = 65536,
    progress: str | None = None,
) -> dict[int, Tensor]:
    """Predicted labels for every k: votes of the k most similar train samples, weighted exp(sim / T).

    `standardize` first scales features with the train mean/std (MAE-CT's online monitor does).
    Memory is bounded by chunk x bank_chunk similarities, whatever the sizes: each chunk of queries
    keeps a running top-k over chunks of the train features (1.28M x 768 train features need 3.9 GB
    for themselves and 256 MB per similarity block). `progress`: a tqdm bar over the test images with
    this description (ImageNet's 50k x 1.28M takes minutes on a CPU).
    """
    from tqdm.auto import tqdm

    with torch.inference_mode():
        if standardize:
            mean, std = train_features.mean(0), train_features.std(0) + 1e-5
            train_features, test_features = (train_features - mean) / std, (test_features - mean) / std
        train = F.normalize(train_features.float(), dim=1)
        test = F.normalize(test_features.float(), dim=1)
        num_classes = int(train_labels.max()) + 1
        k_max = min(max(ks), len(train))
        preds: dict[int, list[Tensor]] = {k: [] for k in ks}
        with tqdm(total=len(test), desc=progress, unit="image", leave=False, disable=progress is None) as bar:
            for start in range(0, len(test), chunk):
                sims, idx = nearest(test[start : start + chunk], train, k_max, bank_chunk)
                votes = F.one_hot(train_labels[idx], num_classes).float() * (sims / temperature).exp().unsqueeze(-1)
                for k in ks:
                    preds[k].append(votes[:, :k].sum(dim=1).argmax(dim=1))
                bar.update(len(idx))
        return {k: torch.cat(p) for k, p in preds.items()}


def knn_accuracy(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor, ks: Sequence[int] = (20,),
                 temperature: float = 0.07, standardize: bool = False, progress: str | None = None) -> dict[int, float]:  # fmt: skip
    """Top-1 accuracy in percent for every k (`progress`: knn_predict's bar)."""
    preds = knn_predict(train_features, train_labels, test_features, ks, temperature, standardize, progress=progress)
    return {k: 100.0 * (p == test_labels).sum().item() / len(test_labels) for k, p in preds.items()}
