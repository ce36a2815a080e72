import math

import pytest
import torch
import torch.nn.functional as F

from hybridssl.config import ConfigError
from hybridssl.losses import nnclr
from hybridssl.methods import Batch
from hybridssl.nn.vit import pool
from tests.methods.toy import batch, build, build_at_vit_b_width, optimizer, train_step


def test_loss_near_log_batch_at_init():
    m = build("nnclr")
    assert m(batch(m, 32))["loss"].item() == pytest.approx(math.log(32), rel=0.05)


def test_nn_acc_is_the_share_of_view_one_neighbours_with_the_query_label(monkeypatch):
    m = build("nnclr", queue_size=32).train()
    m(batch(m, 32, seed=1))  # the queue holds 32 labelled entries (labels i % 10)
    found = []
    original = m.queue.nearest
    monkeypatch.setattr(m.queue, "nearest", lambda *a, **k: found.append(original(*a, **k)) or found[-1])
    b = Batch(batch(m, 32, seed=4).views, torch.arange(100, 132), (torch.arange(32) * 7) % 10)
    queue_labels = m.queue.labels.clone()  # before this step enqueues its own
    out = m(b)
    by_hand = (queue_labels[found[0][1]] == b.labels).float().mean()
    other_view = (queue_labels[found[1][1]] == b.labels).float().mean()
    assert 0 < by_hand < 1 and by_hand != other_view  # the test tells view 1's share from view 2's
    assert out["nn_acc"].item() == pytest.approx(by_hand.item())
    assert "nn_acc" not in m(batch(m, 32, labels=False))  # no labels, no monitoring


def test_queue_sized_against_the_dataset():
    assert build("nnclr").queue.size == 512 // 4  # min(98304, N / 4)
    assert build("nnclr", queue_size=300).queue.size == 300
    from hybridssl.config import resolve
    from hybridssl.engine.train import check_queues

    with pytest.raises(ConfigError, match="method_args.queue_size: 600 exceeds the 512 training images"):
        check_queues(build("nnclr", queue_size=600), resolve({"method": "nnclr", "batch_size": 32}), 512)
    m = build("nnclr", queue_size=8)  # the run refuses this before training (engine check_queues); the queue itself too
    with pytest.raises(ValueError, match="a global batch of 16 does not fit a queue of 8"):
        m(batch(m, 16))


def test_view_one_of_the_batch_is_enqueued_after_the_loss():
    m = build("nnclr").train()
    b = batch(m, 16)
    m(b)
    assert m.queue.ptr.item() == 16
    assert torch.equal(m.queue.ids[:16], b.ids) and torch.equal(m.queue.labels[:16], b.labels)
    with torch.no_grad():  # train-mode BatchNorm: the same batch gives the same projections
        z1 = m.projector(pool(m.encoder(b.views[0]), "cls"))
    assert torch.allclose(m.queue.features[:16], F.normalize(z1, dim=1), atol=1e-4)
    assert (m.queue.ids[16:] == -1).all()


def test_heads_run_once_per_view():
    m = build("nnclr")
    sizes = []
    m.projector.register_forward_hook(lambda mod, inp, out: sizes.append(inp[0].shape[0]))
    m(batch(m, 8))
    assert sizes == [8, 8]


@pytest.mark.parametrize("exclude", [True, False])
def test_own_id_is_never_the_neighbour(exclude, monkeypatch):
    m = build("nnclr", queue_size=16, exclude_self=exclude).train()
    b = batch(m, 16)
    m(b)  # the queue now holds view 1 of exactly these images
    found = []
    original = m.queue.nearest

    def spy(query, ids=None, topk=1):
        out = original(query, ids, topk)
        found.append(m.queue.ids[out[1]])
        return out

    monkeypatch.setattr(m.queue, "nearest", spy)
    m(Batch([b.views[0], b.views[0]], b.ids, b.labels))
    own = torch.cat([found[0] == b.ids, found[1] == b.ids])
    assert not own.any() if exclude else own.float().mean() > 0.9  # without exclusion: itself, mostly


def test_gradients_reach_encoder_projector_and_predictor_only():
    m = build("nnclr")
    before = m.queue.features.clone()
    train_step(m, batch(m, 16), optimizer(m))
    assert m.predictor[0].weight.grad is not None and m.projector[0].weight.grad is not None
    assert m.encoder.blocks[-1].mlp.fc2.weight.grad is not None
    assert not torch.equal(before, m.queue.features)  # written, not learned


@pytest.mark.parametrize("name", ["nnclr", "mae-ct-tune"])
def test_labels_never_reach_the_loss(name):
    losses = []
    for labels in (True, False):
        m = build(name)
        b = batch(m, 16, labels=labels)
        losses.append(m(b)["loss"])
    assert torch.equal(losses[0], losses[1])


def test_each_prediction_meets_the_neighbour_of_the_other_view():
    m = build("nnclr", queue_size=64).train()
    for seed in range(4):  # a queue of 64 real entries, none from the batch below
        m(batch(m, 16, seed=seed))
    b = Batch(batch(m, 16, seed=9).views, torch.arange(100, 116), torch.arange(16) % 10)
    queue = m.queue.features.clone()
    loss = m(b)["loss"]
    with torch.no_grad():  # by hand: z, p per view; the neighbour is the most cosine-similar queue entry
        z = [m.projector(pool(m.encoder(v), "cls")) for v in b.views]
        p = [m.predictor(x) for x in z]
        n = [queue[(F.normalize(x, dim=1) @ queue.T).argmax(dim=1)] for x in z]
    t = m.cfg.temperature
    crossed = (nnclr(p[0], n[1], t) + nnclr(p[1], n[0], t)) / 2
    assert loss.item() == pytest.approx(crossed.item(), rel=1e-5)
    own = (nnclr(p[0], n[0], t) + nnclr(p[1], n[1], t)) / 2  # the mistake: a view with its own neighbour
    swapped = (nnclr(n[1], p[0], t) + nnclr(n[0], p[1], t)) / 2  # rows and columns exchanged
    assert abs(own.item() - loss.item()) > 0.01 and abs(swapped.item() - loss.item()) > 0.01


def test_queue_length_rule_at_its_edges():
    from hybridssl.methods.nnclr import queue_length

    assert queue_length(None, None, 98304) == 98304, "no dataset size known: the paper's length"
    assert queue_length(None, 4, 98304) == 1 and queue_length(None, 2, 98304) == 1, "at least one entry"
    assert queue_length(None, 1000, 98304) == 250 and queue_length(7, 1000, 98304) == 7


def test_head_widths_layouts_and_resolved_settings_at_toy_and_vit_b_width():
    m = build("nnclr")
    linears = [x for x in m.projector if isinstance(x, torch.nn.Linear)]
    assert len(linears) == 3 and isinstance(m.projector[-1], torch.nn.BatchNorm1d) and m.projector[-1].affine
    assert m.resolved == {"proj_hidden_dim": 64, "pred_hidden_dim": 256, "queue_size": 128}  # toy 64; 8 x 32 wide
    assert build_at_vit_b_width("nnclr").resolved == {"proj_hidden_dim": 2048, "pred_hidden_dim": 4096, "queue_size": 128}


def test_topk_reaches_the_lookup_and_label_zero_is_a_label(monkeypatch):
    m = build("nnclr", queue_size=32, topk=3).train()
    m(batch(m, 16))
    asked = []
    original = m.queue.nearest
    monkeypatch.setattr(m.queue, "nearest", lambda q, ids, k: asked.append(k) or original(q, ids, k))
    b = batch(m, 16, seed=1)
    out = m(Batch(b.views, b.ids + 100, torch.zeros(16, dtype=torch.long)))  # every image of class 0
    assert asked == [3, 3] and "nn_acc" in out
