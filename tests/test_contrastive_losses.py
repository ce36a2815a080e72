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


def test_contrastive_logits_stay_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    a, b = torch.randn(64, 32), torch.randn(64, 32)
    negatives = F.normalize(torch.randn(100, 32), dim=1)
    cases = {
        "nt_xent": lambda: nt_xent(a, b, 0.07),
        "info_nce": lambda: info_nce(a, b, 0.07, scale=0.14),
        "info_nce_queue": lambda: info_nce_queue(a, b, negatives, 0.07),
        "nnclr": lambda: nnclr(a, b, 0.07),
    }
    for name, loss in cases.items():
        full = loss()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = loss()
            assert torch.matmul(a, b.T).dtype == torch.bfloat16, "autocast is on around the loss"
        assert mixed.dtype == torch.float32 and torch.equal(mixed, full), name



@pytest.mark.parametrize("name", ["nt_xent", "info_nce", "nnclr"])
def test_two_ranks_compute_what_one_process_computes_on_the_global_batch(monkeypatch, name):
    import hybridssl.losses as losses

    torch.manual_seed(0)
    a, b = torch.randn(8, 5), torch.randn(8, 5)
    loss = getattr(losses, name)
    one_process = loss(a, b, 0.5).item()

    def gather(local: torch.Tensor) -> torch.Tensor:  # every rank's rows of the same tensor, in rank order
        for whole in (a, b):
            if torch.allclose(F.normalize(whole[rows], dim=1), local):
                return F.normalize(whole, dim=1)
        raise AssertionError("gathered a tensor that is not an input")

    per_rank = []
    for r in (0, 1):
        rows = slice(4 * r, 4 * r + 4)
        monkeypatch.setattr(losses, "rank", lambda: r)
        monkeypatch.setattr(losses, "gather_with_grad", gather)
        monkeypatch.setattr(losses, "gather_no_grad", gather)
        per_rank.append(loss(a[rows], b[rows], 0.5).item())
    assert sum(per_rank) / 2 == pytest.approx(one_process, rel=1e-5)


def test_nt_xent_default_temperature_is_simclr_0_1():
    z1, z2 = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)).chunk(2)
    assert nt_xent(z1, z2).item() == nt_xent(z1, z2, 0.1).item() != nt_xent(z1, z2, 0.2).item()
