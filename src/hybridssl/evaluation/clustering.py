"""Unsupervised clustering of frozen features (MAE-CT's evidence that contrastive tuning forms classes).

k-means with k = number of classes on L2-normalised features (so Euclidean k-means groups by cosine
similarity), scored against the labels it never saw: cluster accuracy under the best one-to-one
matching of clusters to classes (Hungarian algorithm), NMI, ARI, and the silhouette score of the
clustering (cosine distance; computed on a seeded subsample, as its cost grows with N^2).
"""

from __future__ import annotations

import sys

import numpy as np
import torch.nn.functional as F
from pydantic import PositiveInt
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from hybridssl.settings import StrictModel
from hybridssl.evaluation.cpu import sklearn_threads


class ClusteringSettings(StrictModel):
    n_init: PositiveInt = 10  # k-means restarts; the lowest-inertia run is kept
    max_iter: PositiveInt = 300
    silhouette_samples: PositiveInt = 5000
    normalize: bool = True  # L2-normalise features first

    def to_dict(self) -> dict:
        return {**self.model_dump(mode="json"), "algorithm": "k-means (scikit-learn, k-means++ init)",
                "silhouette_metric": "cosine", "k": "number of classes"}  # fmt: skip


def cluster_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Fraction of samples whose cluster maps to their class under the best one-to-one mapping."""
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    size = int(max(labels.max(), clusters.max())) + 1
    counts = np.zeros((size, size), dtype=np.int64)
    np.add.at(counts, (clusters, labels), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / len(labels))


def kmeans_clusters(features: Tensor, k: int, settings: ClusteringSettings, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    x = F.normalize(features.float(), dim=1) if settings.normalize else features.float()
    kmeans = KMeans(n_clusters=k, n_init=settings.n_init, max_iter=settings.max_iter, random_state=seed)
    with sklearn_threads():
        return kmeans.fit_predict(x.numpy().astype(np.float64))


def clustering_metrics(features: Tensor, labels: Tensor, num_classes: int, settings: ClusteringSettings,
                       seed: int, progress: str | None = None) -> dict[str, float | None]:  # fmt: skip
    """Cluster accuracy and NMI in [0, 1], ARI in [-1, 1], silhouette in [-1, 1] (None unless 2 <= clusters
    < samples). The silhouette's cosine distance ignores each feature's length, so it needs no normalising.
    `progress`: a line on stderr naming the work first (k-means has no steps to count here, and its
    restarts on 50k features take minutes)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

    if progress is not None:
        print(f"{progress}: k-means (k = {num_classes}, {settings.n_init} restarts) of {len(features)} features, "
              f"then the silhouette of {min(settings.silhouette_samples, len(features))}", file=sys.stderr, flush=True)  # fmt: skip
    clusters = kmeans_clusters(features, num_classes, settings, seed)
    y = labels.numpy()
    x = features.float().numpy()
    found = len(np.unique(clusters))
    with sklearn_threads():
        silhouette = (
            float(silhouette_score(x, clusters, metric="cosine", sample_size=min(settings.silhouette_samples, len(x)), random_state=seed))
            if 1 < found < len(x) else None
        )  # fmt: skip
    return {
        "cluster_accuracy": cluster_accuracy(y, clusters),
        "nmi": float(normalized_mutual_info_score(y, clusters)),
        "ari": float(adjusted_rand_score(y, clusters)),
        "silhouette": silhouette,
    }

