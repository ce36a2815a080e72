import math

import pytest
import torch

from hybridssl.methods import Batch
from tests.methods.toy import WIDTH as DIM
from tests.methods.toy import batch, build, build_at_vit_b_width, optimizer, train_step, views_at_colour_strengths


def test_two_simclr_views_and_a_scalar_loss():
    m = build("simclr", proj_hidden_dim=None)
    b = batch(m, 8)
    assert len(b.views) == 2 and all(v.shape == (8, 1, 28, 28) for v in b.views)
    assert not torch.equal(b.views[0], b.views[1])
    loss = m(b)["loss"]
    assert loss.shape == () and torch.isfinite(loss) and loss.requires_grad
    assert m.projector[0].in_features == DIM and m.projector[-1].out_features == 128
    assert m.projector[0].out_features == 8 * DIM  # 2048 narrowed to 8 x D for narrow encoders
    assert m.resolved == {"proj_hidden_dim": 8 * DIM}


def test_loss_near_log_of_the_candidates_when_logits_are_flat():
    # at a high temperature every logit is ~0: the loss is ln(#candidates) = ln(2B - 1)
    m = build("simclr", temperature=50.0)
    assert m(batch(m, 32))["loss"].item() == pytest.approx(math.log(63), rel=0.01)


def test_the_positive_is_the_other_view_of_the_same_image():
    m = build("simclr").train()
    b = batch(m, 16)
    x = b.views[0]
    same = m(Batch([x, x], b.ids, b.labels))["loss"].item()  # identical views: positives at similarity 1
    shuffled = m(Batch([x, x[torch.randperm(16, generator=torch.Generator().manual_seed(0))]], b.ids, b.labels))["loss"].item()
    assert same < shuffled - 1.0


def test_training_lowers_the_loss_on_a_fixed_batch():
    m = build("simclr")
    b = batch(m, 16)
    opt = optimizer(m, lr=1e-3)
    first = train_step(m, b, opt)["loss"].item()
    for _ in range(5):
        last = train_step(m, b, opt)["loss"].item()
    assert last < first - 0.1


def test_projector_is_two_layers_with_an_output_bias_and_2048_wide_at_vit_b_width():
    m = build("simclr")
    linears = [x for x in m.projector if isinstance(x, torch.nn.Linear)]
    assert len(linears) == 2 and linears[0].bias is None and linears[-1].bias is not None
    assert build_at_vit_b_width("simclr").resolved == {"proj_hidden_dim": 2048}


def test_colour_strength_reaches_both_views():
    views = views_at_colour_strengths("simclr", (0.0, 1.0))
    assert not torch.equal(views[0][0], views[1][0]) and not torch.equal(views[0][1], views[1][1])
