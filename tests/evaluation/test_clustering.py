import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from hybridssl.evaluation.clustering import ClusteringSettings, cluster_accuracy, clustering_metrics, kmeans_clusters


def test_hungarian_accuracy_of_a_permuted_labelling_is_one():
    labels = np.random.default_rng(0).integers(0, 7, size=200)
    permutation = np.array([3, 6, 0, 1, 5, 2, 4])
    assert cluster_accuracy(labels, permutation[labels]) == 1.0


def test_hungarian_accuracy_by_hand():
    labels = np.array([0, 0, 1, 1, 2, 2])
    clusters = np.array([1, 1, 0, 2, 2, 2])
    # best one-to-one map: cluster 1 -> class 0 (2 right), 2 -> 2 (2 right), 0 -> 1 (1 right) = 5 of 6
    assert cluster_accuracy(labels, clusters) == pytest.approx(5 / 6)


def blobs(per_blob: int = 30, seed: int = 0) -> torch.Tensor:
    """Three tight blobs in different directions (they stay apart after L2 normalisation)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]])
    return centers.repeat_interleave(per_blob, 0) + 0.02 * torch.randn(3 * per_blob, 4, generator=g)


def test_separated_blobs_score_perfectly():
    labels = torch.arange(3).repeat_interleave(30)
    m = clustering_metrics(blobs(), labels, 3)
    assert m["cluster_accuracy"] == m["nmi"] == m["ari"] == 1.0
    assert m["silhouette"] > 0.9


def test_nmi_and_ari_match_scikit_learn_on_an_imperfect_labelling():
    features = blobs()
    labels = torch.tensor([0] * 20 + [1] * 10 + [1] * 25 + [2] * 5 + [2] * 30)  # blobs 1 and 2 mix two classes
    clusters = kmeans_clusters(features, 3, ClusteringSettings(), seed=0)
    assert len(np.unique(clusters)) == 3
    m = clustering_metrics(features, labels, 3)
    assert m["nmi"] == pytest.approx(normalized_mutual_info_score(labels.numpy(), clusters))
    assert m["ari"] == pytest.approx(adjusted_rand_score(labels.numpy(), clusters))
    assert m["cluster_accuracy"] == pytest.approx((20 + 25 + 30) / 90)
    assert 0 < m["ari"] < m["nmi"] < 1


def test_kmeans_is_seeded():
    x = torch.randn(60, 5, generator=torch.Generator().manual_seed(1))
    assert (kmeans_clusters(x, 4, ClusteringSettings(n_init=2), 7) == kmeans_clusters(x, 4, ClusteringSettings(n_init=2), 7)).all()
