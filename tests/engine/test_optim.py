import pytest

from hybridssl.engine.optim import WarmupCosine


def test_warmup_then_cosine():
    s = WarmupCosine(total_steps=110, warmup_steps=10, min_fraction=0.0)
    assert s(0) == pytest.approx(0.1) and s(9) == pytest.approx(1.0)
    assert s(10) == pytest.approx(1.0) and s(60) == pytest.approx(0.5) and s(110) == pytest.approx(0.0)
    assert WarmupCosine(100, 0, 0.1)(100) == pytest.approx(0.1)
    assert all(s(i) >= s(i + 1) for i in range(10, 110))
