"""Weighted k-NN classifier on cosine similarity (DINO / MAE-CT protocol, docs/methods.md A8)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.inference_mode()
def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    ks: Sequence[int] = (20,),
    temperature: float = 0.07,
    standardize: bool = False,
    chunk: int = 1024,
) -> dict[int, Tensor]:
    """Predicted labels for every k: votes of the k most similar train samples, weighted exp(sim / T).

    `standardize` first scales features with the train mean/std (MAE-CT's online monitor does).
    """
    if standardize:
        mean, std = train_features.mean(0), train_features.std(0) + 1e-5
        train_features, test_features = (train_features - mean) / std, (test_features - mean) / std
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    num_classes = int(train_labels.max()) + 1
    k_max = min(max(ks), len(train))
    preds: dict[int, list[Tensor]] = {k: [] for k in ks}
    for start in range(0, len(test), chunk):
        sims, idx = (test[start : start + chunk] @ train.T).topk(k_max, dim=1)
        votes = F.one_hot(train_labels[idx], num_classes).float() * (sims / temperature).exp().unsqueeze(-1)
        for k in ks:
            preds[k].append(votes[:, :k].sum(dim=1).argmax(dim=1))
    return {k: torch.cat(p) for k, p in preds.items()}


def knn_accuracy(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
                 ks: Sequence[int] = (20,), temperature: float = 0.07, standardize: bool = False) -> dict[int, float]:  # fmt: skip
    """Top-1 accuracy in percent for every k."""
    preds = knn_predict(train_features, train_labels, test_features, ks, temperature, standardize)
    return {k: 100.0 * (p == test_labels).sum().item() / len(test_labels) for k, p in preds.items()}
