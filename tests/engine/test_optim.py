import pytest

from hybridssl.engine.optim import WarmupCosine


def test_warmup_then_cosine():
    s = WarmupCosine(total_steps=110, warmup_steps=10, min_fraction=0.0)
    assert s(0) == pytest.approx(0.1) and s(9) == pytest.approx(1.0)
    assert s(10) == pytest.approx(1.0) and s(60) == pytest.approx(0.5) and s(110) == pytest.approx(0.0)
    assert WarmupCosine(100, 0, 0.1)(100) == pytest.approx(0.1)
    assert all(s(i) >= s(i + 1) for i in range(10, 110))


def test_warmup_in_epochs_counts_the_runs_own_epochs(fmnist_dir, tmp_path):
    """The ImageNet configs give warmup in epochs; the Trainer does not know its epoch length when it asks
    for the optimizer (this crashed every one of them). 512 images at batch 32: 16 steps an epoch."""
    import csv

    from tests.conftest import pretrain_tiny

    run = pretrain_tiny(fmnist_dir, tmp_path / "run", "mae", 6, "--set", "optim.warmup_epochs=0.25")
    rows = list(csv.DictReader((run / "logs" / "csv" / "metrics.csv").open()))
    column = next(c for c in rows[0] if c.startswith("lr-"))
    lrs = [float(r[column]) for r in rows if r[column]]
    assert len(lrs) == 6
    assert [round(lr / lrs[3], 6) for lr in lrs[:4]] == [0.25, 0.5, 0.75, 1.0], "4 warmup steps (a quarter epoch)"
    assert lrs[4] == lrs[3] > lrs[5], "then the cosine from its top"
