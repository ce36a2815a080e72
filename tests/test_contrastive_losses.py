import math

import pytest
import torch
import torch.nn.functional as F

from hybridssl.losses import info_nce, info_nce_queue, nnclr, nt_xent


def test_nt_xent_hand_computed():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    t = 0.5
    cands = torch.cat([z1, z2])
    total = 0.0
    for i, pos in enumerate([2, 3, 0, 1]):
        sims = cands @ cands[i] / t
        denom = sum(math.exp(sims[j]) for j in range(4) if j != i)
        total += -(sims[pos].item() - math.log(denom))
    assert nt_xent(z1, z2, t).item() == pytest.approx(total / 4, rel=1e-5)


def test_contrastive_losses_start_near_log_candidates():
    torch.manual_seed(0)
    b, d = 256, 128
    a, c = torch.randn(b, d), torch.randn(b, d)
    # random directions in high dimension: every similarity ~ 0, so the loss ~ ln(#candidates)
    assert nt_xent(a, c, 1.0).item() == pytest.approx(math.log(2 * b - 1), rel=0.02)
    assert info_nce(a, c, 1.0).item() == pytest.approx(math.log(b), rel=0.02)
    assert info_nce(a, c, 0.2, scale=0.4).item() == pytest.approx(0.4 * math.log(b), rel=0.15)
    assert nnclr(a, c, 1.0).item() == pytest.approx(math.log(b), rel=0.02)
    assert info_nce_queue(a, c, F.normalize(torch.randn(1000, d), dim=1), 1.0).item() == pytest.approx(math.log(1001), rel=0.02)


def test_info_nce_scale_and_hand_value():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    t = 0.2
    row0 = -(1 / t - math.log(math.exp(1 / t) + math.exp(1 / t)))
    row1 = -(0 - math.log(1 + 1))
    assert info_nce(q, k, t, scale=2 * t).item() == pytest.approx(2 * t * (row0 + row1) / 2, rel=1e-5)


def test_nnclr_rows_are_neighbours_columns_predictions():
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    nn_ = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    t = 1.0
    loss = nnclr(p, nn_, t)
    # row 0 (neighbour [0,1]) must pick column 0 (prediction [1,0]): logits [0, 1]
    row0 = -(0 - math.log(1 + math.e))
    row1 = -(1 - math.log(1 + math.e))
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-5)
    loss.backward()
    assert p.grad is not None and p.grad.abs().sum() > 0


def test_queue_loss_hand_value():
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[1.0, 0.0]])
    negs = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    t = 0.5
    expected = -(2 - math.log(math.exp(2) + math.exp(0) + math.exp(-2)))
    assert info_nce_queue(q, k, negs, t).item() == pytest.approx(expected, rel=1e-5)
