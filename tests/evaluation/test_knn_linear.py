import torch

from hybridssl.evaluation.knn import knn_accuracy, knn_predict
from hybridssl.evaluation.linear import (
    ProbeSettings,
    linear_probe_accuracy,
    linear_probe_sweep,
    train_linear_probe,
    train_linear_probes,
)


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


def test_sweep_picks_the_lr_on_the_train_holdout_never_on_the_test_set():
    xtr, ytr = separable(30)
    xte, yte = separable(10, seed=1)
    settings = ProbeSettings(epochs=1, batch_size=8, base_lrs=(1e-6, 0.1))
    sweep = linear_probe_sweep(xtr, ytr, xte, yte, settings)
    assert sweep.selected_base_lr == 0.1 and sweep.holdout_size == 12
    assert sweep.holdout_top1[0.1] == 100.0 and sweep.holdout_top1[1e-6] < 100.0
    # scrambled test labels change the test accuracy but not the choice
    scrambled = linear_probe_sweep(xtr, ytr, xte, yte.roll(1), settings)
    assert scrambled.selected_base_lr == 0.1 and scrambled.holdout_top1 == sweep.holdout_top1
    assert scrambled.test_top1 < sweep.test_top1 == 100.0


def test_parallel_heads_are_independent_and_train_like_a_single_probe():
    xtr, ytr = separable(20)
    settings = ProbeSettings(epochs=3, batch_size=16)
    pair_a = train_linear_probes(xtr, ytr, 4, settings, [0.3, 0.01], seed=0)
    pair_b = train_linear_probes(xtr, ytr, 4, settings, [0.3, 0.05], seed=0)
    alone = train_linear_probe(xtr, ytr, 4, settings.model_copy(update={"base_lr": 0.3}), seed=0)
    # head 0 is initialised first in every run, so with equal batches it must end where a lone probe ends
    for model in (pair_a, pair_b):
        assert torch.allclose(model.heads[0].weight, alone.heads[0].weight, atol=1e-6)
    assert not torch.allclose(pair_a.heads[1].weight, pair_b.heads[1].weight), "the lr of each head is its own"


def test_knn_over_bank_chunks_equals_the_whole_bank_at_once():
    """Bounded memory (a running top-k over bank chunks, some smaller than k) changes no prediction."""
    from hybridssl.evaluation.knn import knn_predict

    torch.manual_seed(0)
    bank, labels, queries = torch.randn(1000, 16), torch.randint(0, 5, (1000,)), torch.randn(300, 16)
    whole = knn_predict(bank, labels, queries, (1, 20, 200), chunk=4096, bank_chunk=10**6)
    chunked = knn_predict(bank, labels, queries, (1, 20, 200), chunk=64, bank_chunk=97)
    assert all(torch.equal(whole[k], chunked[k]) for k in whole)
    assert not torch.equal(whole[1], whole[200]), "k matters, so the chunks were really merged"
