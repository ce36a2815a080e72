
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hybridssl.nn.heads import mlp
from hybridssl.nn.momentum import EMA, momentum_at
from hybridssl.nn.queue import FeatureQueue


def test_mlp_layouts():
    proj = mlp(16, 32, 8, num_layers=3, last_norm="affine")
    kinds = [type(m).__name__ for m in proj]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert proj[0].bias is None and proj[-1].affine
    pred = mlp(8, 32, 8, last_norm="nonaffine", hidden_bias=True)
    assert pred[0].bias is not None and not pred[-1].affine
    assert mlp(8, 16, 4)(torch.randn(5, 8)).shape == (5, 4)


def test_ema_m1_keeps_target_m0_copies_source_and_buffers():
    torch.manual_seed(0)
    source = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    ema = EMA(source)
    before = [p.clone() for p in ema.parameters()]
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    source(torch.randn(8, 4))  # moves BN running stats
    ema.update(source, momentum=1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, ema.parameters()))
    ema.update(source, momentum=0.0)
    assert all(torch.equal(a, b) for a, b in zip(source.parameters(), ema.parameters()))
    assert torch.equal(ema.module[1].running_mean, source[1].running_mean)
    assert not any(p.requires_grad for p in ema.parameters())


def test_ema_interpolates():
    source, ema = nn.Linear(2, 2), None
    ema = EMA(source)
    with torch.no_grad():
        target0 = ema.module.weight.clone()
        source.weight.add_(1.0)
    ema.update(source, 0.9)
    assert torch.allclose(ema.module.weight, 0.9 * target0 + 0.1 * source.weight)


def test_momentum_schedules():
    assert momentum_at(0.3, 0.996) == 0.996
    assert momentum_at(0.0, 0.99, 1.0, "cosine") == pytest.approx(0.99)
    assert momentum_at(0.5, 0.99, 1.0, "cosine") == pytest.approx(0.995)
    assert momentum_at(1.0, 0.99, 1.0, "cosine") == pytest.approx(1.0)


def test_queue_pointer_wraps_and_fills_every_slot():
    q = FeatureQueue(size=12, dim=4)
    for step in range(3):  # K / B = 3 steps of 4
        q.enqueue(torch.randn(4, 4), torch.arange(4) + 4 * step)
    assert (q.ids >= 0).all() and q.ptr.item() == 0
    assert torch.allclose(q.features.norm(dim=1), torch.ones(12))
    q.enqueue(torch.randn(5, 4), torch.arange(100, 105))
    assert q.ptr.item() == 5 and q.ids[:5].tolist() == list(range(100, 105))


def test_queue_never_returns_the_query_own_id():
    torch.manual_seed(0)
    q = FeatureQueue(size=8, dim=3)
    feats = F.normalize(torch.randn(8, 3), dim=1)
    q.enqueue(feats, torch.arange(8))
    _, index = q.nearest(feats, ids=torch.arange(8))
    assert (q.ids[index] != torch.arange(8)).all()
    _, same = q.nearest(feats)  # without exclusion the nearest is the entry itself
    assert torch.equal(q.ids[same], torch.arange(8))
    for _ in range(20):
        _, index = q.nearest(feats, ids=torch.arange(8), topk=3)
        assert (q.ids[index] != torch.arange(8)).all()


def test_queue_topk_samples_uniformly_among_the_k_best():
    torch.manual_seed(0)
    q = FeatureQueue(size=5, dim=2)
    angles = torch.tensor([0.0, 0.1, 0.2, 2.0, 3.0])
    q.enqueue(torch.stack([angles.cos(), angles.sin()], 1), torch.arange(5))
    query = torch.tensor([[1.0, 0.0]]).repeat(3000, 1)
    _, index = q.nearest(query, topk=3)
    counts = torch.bincount(index, minlength=5).float() / 3000
    assert counts[3:].sum() == 0 and torch.allclose(counts[:3], torch.full((3,), 1 / 3), atol=0.04)


def test_queue_state_survives_a_state_dict_round_trip():
    q = FeatureQueue(6, 2)
    q.enqueue(torch.randn(4, 2), torch.arange(4), torch.arange(4) % 2)
    r = FeatureQueue(6, 2)
    r.load_state_dict(q.state_dict())
    assert r.ptr.item() == 4 and torch.equal(r.features, q.features) and torch.equal(r.labels, q.labels)


def test_schedules_and_norms_are_checked_by_name_and_momentum_stays_at_its_end_past_progress_one():
    assert momentum_at(1.5, 0.99, 1.0, "cosine") == 1.0 and momentum_at(-0.5, 0.99, 1.0, "cosine") == 0.99
    for bad in ("cosin", None):
        with pytest.raises(ValueError, match="momentum schedule"):
            momentum_at(0.5, 0.99, 1.0, bad)
        with pytest.raises(ValueError, match="last_norm"):
            mlp(4, 8, 2, last_norm=bad)


def test_ema_refuses_a_source_of_another_shape_by_name():
    with pytest.raises(ValueError, match="^EMA source and target have different parameters$"):
        EMA(nn.Linear(2, 2)).update(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), 0.5)
    # the same parameters, other buffers: the running statistics would silently stay unfollowed
    with pytest.raises(ValueError, match="^EMA source and target have different buffers$"):
        EMA(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))).update(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)), 0.5)


def test_queue_top2_draws_between_the_two_best_and_top1_takes_the_best():
    torch.manual_seed(0)
    q = FeatureQueue(size=4, dim=2)
    angles = torch.tensor([0.0, 0.1, 2.0, 3.0])
    q.enqueue(torch.stack([angles.cos(), angles.sin()], 1), torch.arange(4))
    query = torch.tensor([[1.0, 0.0]]).repeat(2000, 1)
    counts = torch.bincount(q.nearest(query, topk=2)[1], minlength=4).float() / 2000
    assert counts[2:].sum() == 0 and torch.allclose(counts[:2], torch.full((2,), 0.5), atol=0.05)
    assert (q.nearest(query, topk=1)[1] == 0).all()


def test_nn_accuracy_without_any_labelled_sample_is_a_float_zero():
    q = FeatureQueue(size=4, dim=2)
    q.enqueue(torch.randn(4, 2), torch.arange(4), torch.tensor([1, 2, 3, 4]))
    value = q.nn_accuracy(torch.tensor([0, 1]), torch.tensor([-1, -1]))
    assert value.dtype == torch.float32 and value.shape == () and value.item() == 0.0
    assert q.nn_accuracy(torch.tensor([0, 1]), torch.tensor([1, -1])).item() == 1.0


def test_head_width_is_the_paper_width_from_vit_s_up_and_at_most_8d_below():
    from hybridssl.nn.heads import head_width

    assert head_width(4096, 384) == 4096 and head_width(4096, 768) == 4096
    assert head_width(4096, 383) == 3064 and head_width(4096, 128) == 1024 and head_width(512, 128) == 512


def test_a_new_queue_holds_no_labels_or_ids_and_refuses_size_zero():
    q = FeatureQueue(size=3, dim=2)
    assert q.labels.tolist() == [-1, -1, -1] and q.ids.tolist() == [-1, -1, -1]
    assert torch.allclose(q.features.norm(dim=1), torch.ones(3))
    with pytest.raises(ValueError, match="queue size must be positive, got 0"):
        FeatureQueue(size=0, dim=2)
    assert FeatureQueue(size=1, dim=2).size == 1
