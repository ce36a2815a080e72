import warnings

import pytest
import torch

from hybridssl.evaluation.knn import knn_accuracy, knn_predict
from hybridssl.evaluation.linear import (
    ProbeSettings,
    linear_probe_accuracy,
    linear_probe_sweep,
    train_linear_probe,
    train_linear_probes,
    warn_at_the_edge,
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


def test_knn_predicts_as_a_brute_force_vote_over_cosine_neighbours():
    """Features of very different lengths, so normalising the wrong axis or not at all changes the answer."""
    g = torch.Generator().manual_seed(3)
    train = torch.randn(60, 6, generator=g) * torch.logspace(-1, 1, 60).unsqueeze(1)
    test = torch.randn(40, 6, generator=g) * torch.logspace(1, -1, 40).unsqueeze(1)
    labels = torch.randint(0, 4, (60,), generator=g)
    preds = knn_predict(train, labels, test, ks=(1, 7, 25), temperature=0.2)
    for i, query in enumerate(test):
        sims = torch.nn.functional.cosine_similarity(query.unsqueeze(0), train, dim=1)
        order = sims.argsort(descending=True)
        for k in (1, 7, 25):
            votes = torch.zeros(4).index_add_(0, labels[order[:k]], (sims[order[:k]] / 0.2).exp())
            assert preds[k][i].item() == votes.argmax().item(), (i, k)


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
    acc = linear_probe_accuracy(xtr, ytr, xte, yte, ProbeSettings(epochs=10, batch_size=32))  # seed 0
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


def noisy(n_per_class: int, seed: int):
    """Overlapping classes: the test accuracy depends on the lr and the seed the probe is trained with."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(n_per_class)
    return torch.eye(3, 6)[labels] + 0.8 * torch.randn(len(labels), 6, generator=g), labels


def test_sweep_by_hand_holdout_heads_then_one_probe_at_the_chosen_lr_with_the_run_seed():
    from hybridssl.evaluation.linear import head_accuracies
    from hybridssl.evaluation.subsets import stratified_holdout

    xtr, ytr = noisy(40, 0)
    xte, yte = noisy(40, 1)
    settings = ProbeSettings(epochs=2, batch_size=16, base_lrs=(0.03, 0.01))  # neither is base_lr (0.1)
    sweep = linear_probe_sweep(xtr, ytr, xte, yte, settings, seed=5)
    fit, held = stratified_holdout(ytr, 0.1, 5)
    heads = train_linear_probes(xtr[fit], ytr[fit], 3, settings, [0.01, 0.03], 5)
    assert sweep.holdout_top1 == dict(zip([0.01, 0.03], head_accuracies(heads, xtr[held], ytr[held])))
    best = max([0.01, 0.03], key=lambda lr: (sweep.holdout_top1[lr], -lr))
    assert sweep.selected_base_lr == best and sweep.holdout_size == len(held) == 12
    final = train_linear_probe(xtr, ytr, 3, settings.model_copy(update={"base_lr": best}), seed=5)
    assert sweep.test_top1 == head_accuracies(final, xte, yte)[0]


def test_sweep_ties_go_to_the_smallest_lr_whatever_the_order_given():
    xtr, ytr = separable(30)
    xte, yte = separable(10, seed=1)
    sweep = linear_probe_sweep(xtr, ytr, xte, yte, ProbeSettings(epochs=3, batch_size=8, base_lrs=(3.0, 0.3, 1.0)))
    assert sweep.holdout_top1 == {0.3: 100.0, 1.0: 100.0, 3.0: 100.0} and sweep.selected_base_lr == 0.3


def test_sweep_without_a_choice_or_without_a_holdout_trains_the_smallest_lr_on_everything():
    xtr, ytr = separable(30)
    xte, yte = separable(10, seed=1)
    one = linear_probe_sweep(xtr, ytr, xte, yte, ProbeSettings(epochs=1, base_lrs=(0.2,)))
    assert (one.selected_base_lr, one.holdout_top1, one.holdout_size) == (0.2, {}, 0)
    singletons = torch.arange(4)  # one image per class: nothing can be held out
    none_held = linear_probe_sweep(xtr[singletons * 30], singletons, xte, yte, ProbeSettings(epochs=1, base_lrs=(0.5, 0.2)))
    assert (none_held.selected_base_lr, none_held.holdout_top1, none_held.holdout_size) == (0.2, {}, 0)
    pair = torch.tensor([0, 1, 30, 60, 90])  # class 0 has two images: one is held out
    one_held = linear_probe_sweep(xtr[pair], ytr[pair], xte, yte, ProbeSettings(epochs=1, base_lrs=(0.5, 0.2)))
    assert one_held.holdout_size == 1 and set(one_held.holdout_top1) == {0.2, 0.5}


def test_probe_optimizer_lr_per_head_scaled_by_batch_weight_decay_and_warmup(monkeypatch):
    import hybridssl.evaluation.linear as linear

    seen = {}
    real_sgd, real_schedule = torch.optim.SGD, linear.WarmupCosine

    def sgd(groups, **kwargs):
        opt = real_sgd(groups, **kwargs)
        seen["lrs"], seen["weight_decay"] = [g["lr"] for g in opt.param_groups], opt.defaults["weight_decay"]
        return opt

    def schedule(total, warmup, *args):
        seen["schedule"] = (total, warmup)
        return real_schedule(total, warmup, *args)

    monkeypatch.setattr(torch.optim, "SGD", sgd)
    monkeypatch.setattr(linear, "WarmupCosine", schedule)
    xtr, ytr = separable(20)  # 80 images, batch 64: 1 step per epoch
    settings = ProbeSettings(epochs=10, batch_size=64, weight_decay=0.01, warmup_fraction=0.3)
    train_linear_probes(xtr, ytr, 4, settings, [0.4, 0.8], seed=0)
    assert seen == {"lrs": [0.1, 0.2], "weight_decay": 0.01, "schedule": (10, 3)}


def test_probe_normalises_with_the_train_features_own_mean_and_variance():
    from hybridssl.evaluation.linear import ProbeHeads

    g = torch.Generator().manual_seed(0)
    x = 1e-3 * torch.randn(64, 3, generator=g) + torch.tensor([5.0, -2.0, 0.0])  # variance ~1e-6: eps shows
    model = train_linear_probe(x, torch.arange(64) % 2, 2, ProbeSettings(epochs=3, batch_size=16), seed=0)
    assert isinstance(model, ProbeHeads) and not model.norm.affine
    assert torch.allclose(model.norm.running_mean, x.mean(0), atol=1e-6), "every batch counts equally"
    normed = (x - model.norm.running_mean) / (model.norm.running_var + 1e-6).sqrt()
    with torch.no_grad():
        assert torch.allclose(model(x)[0], model.heads[0](normed), atol=1e-4)


def test_probe_and_knn_defaults_are_the_documented_ones():
    xtr, ytr = noisy(30, 0)
    xte, yte = noisy(30, 1)
    settings = ProbeSettings(epochs=2, batch_size=16)
    accs = [linear_probe_accuracy(xtr, ytr, xte, yte, settings, seed=s) for s in (0, 1)]
    assert linear_probe_accuracy(xtr, ytr, xte, yte, settings) == accs[0] != accs[1]
    # standardising first removes the shared offset along dimension 0, which changes the cosine neighbour
    bank = torch.tensor([[3.5, -1.3], [3.2, 0.5], [0.8, 0.3], [2.0, -0.5]])
    bank_labels, q = torch.tensor([0, 1, 0, 1]), torch.tensor([[3.3, -0.9]])
    plain = knn_predict(bank, bank_labels, q, ks=(1,))[1]
    standardized = knn_predict(bank, bank_labels, q, ks=(1,), standardize=True)[1]
    assert plain.item() != standardized.item()
    assert knn_accuracy(bank, bank_labels, q, standardized, ks=(1,), standardize=True) == {1: 100.0}
    assert knn_accuracy(bank, bank_labels, q, plain, ks=(1,)) == {1: 100.0}


def test_knn_standardises_with_the_train_statistics_then_votes_at_temperature_007():
    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([1.0, 1e-5, 3.0])  # one nearly constant dimension: the 1e-5 in std + 1e-5 shows
    train = (torch.randn(40, 3, generator=g) + torch.tensor([3.0, 0.0, -1.0])) * scale
    test = (torch.randn(30, 3, generator=g) + torch.tensor([3.0, 0.0, -1.0])) * scale
    labels = torch.arange(40) % 4
    mean, std = train.mean(0), train.std(0) + 1e-5
    for k in (1, 5):
        by_hand = knn_predict((train - mean) / std, labels, (test - mean) / std, ks=(k,))[k]
        assert torch.equal(knn_predict(train, labels, test, ks=(k,), standardize=True)[k], by_hand)
    # one vote at similarity 1 against two at 0.9: at T = 0.07 the single close vote wins, at T ~ 1 the pair
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.436], [0.9, -0.436]])
    bank_labels, query = torch.tensor([0, 1, 1]), torch.tensor([[1.0, 0.0]])
    assert knn_predict(bank, bank_labels, query, ks=(3,))[3].item() == 0
    assert knn_predict(bank, bank_labels, query, ks=(3,), temperature=1.0)[3].item() == 1
    assert knn_accuracy(bank, bank_labels, query, torch.tensor([0]), ks=(3,)) == {3: 100.0}


def test_sweep_warns_when_it_chooses_an_end_that_beats_its_neighbour():
    xtr, ytr = noisy(40, seed=0)
    xte, yte = noisy(10, seed=1)
    settings = ProbeSettings(epochs=2, batch_size=16)
    with pytest.warns(UserWarning, match=r"largest base lr of the sweep \(0\.1 of 1e-06, 0\.1\)"):
        linear_probe_sweep(xtr, ytr, xte, yte, settings.model_copy(update={"base_lrs": (1e-6, 0.1)}))
    with pytest.warns(UserWarning, match=r"smallest base lr of the sweep \(0\.01 of 0\.01, 0\.1, 1\)"):
        warn_at_the_edge({1.0: 70.0, 0.01: 80.0, 0.1: 79.0}, 0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a tie at the small end is the rule's choice, not a sign
        tied = linear_probe_sweep(*separable(30), *separable(10, seed=1), ProbeSettings(epochs=3, batch_size=8, base_lrs=(0.3, 1.0)))
        assert tied.selected_base_lr == 0.3 and tied.holdout_top1 == {0.3: 100.0, 1.0: 100.0}
        warn_at_the_edge({0.01: 70.0, 0.1: 80.0, 1.0: 79.0}, 0.1)  # inside the sweep
        warn_at_the_edge({0.01: 80.0, 0.1: 80.0, 1.0: 70.0}, 0.01)  # ties its neighbour, beats the far end
        warn_at_the_edge({0.1: 50.0}, 0.1)  # `--lrs 0.1,0.1`: one lr swept
