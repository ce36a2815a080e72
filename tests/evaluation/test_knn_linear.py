import torch

from hybridssl.evaluation.knn import knn_accuracy, knn_predict
from hybridssl.evaluation.linear import ProbeSettings, linear_probe_accuracy


def separable(n_per_class: int, dim: int = 8, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.eye(classes, dim) * 10
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return centers[labels] + 0.1 * torch.randn(len(labels), dim, generator=g), labels


def test_knn_is_perfect_on_separable_data():
    xtr, ytr = separable(20)
    xte, yte = separable(5, seed=1)
    accs = knn_accuracy(xtr, ytr, xte, yte, ks=(1, 5, 20))
    assert accs == {1: 100.0, 5: 100.0, 20: 100.0}


def test_knn_weights_votes_by_similarity():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.05]])
    # k=3: one very similar vote for class 0 outweighs two orthogonal votes for class 1 at T = 0.07
    assert knn_predict(train, labels, query, ks=(3,))[3].item() == 0
    # with a huge temperature the votes are nearly equal and the majority wins
    assert knn_predict(train, labels, query, ks=(3,), temperature=1e6)[3].item() == 1


def test_linear_probe_learns_separable_data():
    xtr, ytr = separable(50)
    xte, yte = separable(10, seed=1)
    acc = linear_probe_accuracy(xtr, ytr, xte, yte, ProbeSettings(epochs=10, batch_size=32))
    assert acc == 100.0
