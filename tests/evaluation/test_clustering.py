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
    m = clustering_metrics(blobs(), labels, 3, ClusteringSettings(), 0)
    assert m["cluster_accuracy"] == m["nmi"] == m["ari"] == 1.0
    assert m["silhouette"] > 0.9


def test_nmi_and_ari_match_scikit_learn_on_an_imperfect_labelling():
    features = blobs()
    labels = torch.tensor([0] * 20 + [1] * 10 + [1] * 25 + [2] * 5 + [2] * 30)  # blobs 1 and 2 mix two classes
    clusters = kmeans_clusters(features, 3, ClusteringSettings(), seed=0)
    assert len(np.unique(clusters)) == 3
    m = clustering_metrics(features, labels, 3, ClusteringSettings(), 0)
    assert m["nmi"] == pytest.approx(normalized_mutual_info_score(labels.numpy(), clusters))
    assert m["ari"] == pytest.approx(adjusted_rand_score(labels.numpy(), clusters))
    assert m["cluster_accuracy"] == pytest.approx((20 + 25 + 30) / 90)
    assert 0 < m["ari"] < m["nmi"] < 1


def test_kmeans_is_seeded():
    x = torch.randn(60, 5, generator=torch.Generator().manual_seed(1))
    assert (kmeans_clusters(x, 4, ClusteringSettings(n_init=2), 7) == kmeans_clusters(x, 4, ClusteringSettings(n_init=2), 7)).all()


def metrics(features: torch.Tensor, labels: torch.Tensor, k: int, **settings) -> dict:
    return clustering_metrics(features, labels, k, ClusteringSettings(**settings), seed=0)


def test_normalised_kmeans_groups_by_direction_and_raw_kmeans_by_length():
    # two directions, each at a short and a long length: after L2 normalisation the directions are the
    # clusters; on raw features the lengths are
    g = torch.Generator().manual_seed(0)
    direction = torch.tensor([[1.0, 0.2], [1.0, -0.2]]).repeat_interleave(20, 0)
    length = torch.tensor([1.0, 10.0]).repeat(20).unsqueeze(1)
    features = direction * length + 0.01 * torch.randn(40, 2, generator=g)
    by_direction = torch.arange(2).repeat_interleave(20)
    by_length = (length.squeeze(1) > 5).long()
    assert metrics(features, by_direction, 2)["cluster_accuracy"] == 1.0
    assert metrics(features, by_length, 2, normalize=False)["cluster_accuracy"] == 1.0
    assert metrics(features, by_direction, 2, normalize=False)["cluster_accuracy"] == 0.5


def test_kmeans_gets_its_restarts_and_iterations(monkeypatch):
    import sklearn.cluster

    seen = {}
    real = sklearn.cluster.KMeans

    def spy(**kwargs):
        seen.update(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(sklearn.cluster, "KMeans", spy)
    kmeans_clusters(blobs(), 3, ClusteringSettings(n_init=3, max_iter=7), seed=5)
    assert seen == {"n_clusters": 3, "n_init": 3, "max_iter": 7, "random_state": 5}


def test_the_whole_evaluation_is_seeded_including_the_silhouette_subsample():
    x = torch.randn(300, 6, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(300) % 5
    settings = ClusteringSettings(n_init=1, silhouette_samples=50)
    runs = [clustering_metrics(x, labels, 5, settings, seed=s) for s in (3, 3, 4)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_silhouette_is_the_cosine_silhouette_of_a_seeded_subsample():
    from sklearn.metrics import silhouette_score

    g = torch.Generator().manual_seed(0)
    # blobs in different directions at very different lengths: cosine and Euclidean silhouettes differ
    features = blobs() * torch.rand(90, 1, generator=g).mul(20).add(0.5)
    labels = torch.arange(3).repeat_interleave(30)
    clusters = kmeans_clusters(features, 3, ClusteringSettings(), seed=0)
    x = features.numpy()
    full = metrics(features, labels, 3)["silhouette"]
    assert full == pytest.approx(silhouette_score(x, clusters, metric="cosine"))
    assert full != pytest.approx(silhouette_score(x, clusters), abs=1e-3)
    sub = metrics(features, labels, 3, silhouette_samples=20)["silhouette"]
    assert sub == pytest.approx(silhouette_score(x, clusters, metric="cosine", sample_size=20, random_state=0))
    assert sub != pytest.approx(full, abs=1e-4)


def test_silhouette_needs_two_clusters_and_fewer_clusters_than_samples():
    labels = torch.tensor([0, 1, 0, 1])
    same = torch.ones(4, 3)  # one distinct point: k-means finds one cluster
    with pytest.warns(Warning):
        assert metrics(same, labels, 2)["silhouette"] is None
    two = torch.tensor([[1.0, 0], [1.0, 0.01], [0, 1.0], [0.01, 1.0]])
    assert metrics(two, labels, 2)["silhouette"] > 0.9  # exactly two clusters: defined
    three = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    assert metrics(three, torch.tensor([0, 1, 2]), 3)["silhouette"] is None  # one sample per cluster


def test_clustering_records_say_how_they_were_computed():
    assert ClusteringSettings(n_init=4).to_dict() == {
        "n_init": 4, "max_iter": 300, "silhouette_samples": 5000, "normalize": True,
        "algorithm": "k-means (scikit-learn, k-means++ init)", "silhouette_metric": "cosine", "k": "number of classes",
    }  # fmt: skip
