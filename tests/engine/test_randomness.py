"""Step seeds and the RNG states a checkpoint carries."""

import random

import numpy as np
import pytest
import torch

from hybridssl.engine import randomness
from hybridssl.engine.randomness import local_rng_state, restore_rng_states, seed_step, step_seed


def draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), torch.rand(1).item()


def test_step_seeds_are_distinct_per_stream_rank_and_step_and_stable():
    seeds = {step_seed(0, rank, step, purpose) for rank in (None, 0, 1, 2) for step in (-1, 0, 1, 1_000_033) for purpose in (0, 1)}
    assert len(seeds) == 4 * 4 * 2 and all(0 <= s < 2**63 for s in seeds)
    # the old formula's collision: rank 0 at step 1_000_033 drew what rank 1 drew at step 0
    assert step_seed(0, 0, 1_000_033) != step_seed(0, 1, 0)
    # stable across processes and versions (no hash(), no process state): a checkpoint's resume depends on it
    assert step_seed(3, 1, 5) == 4953041256467392649


def test_seed_step_seeds_python_numpy_and_torch():
    seed_step(1, 0, 7)
    first = draws()
    seed_step(1, 0, 7)
    assert draws() == first
    seed_step(1, 1, 7)
    assert draws() != first


@pytest.mark.parametrize("rank", [0, 1])
def test_each_rank_restores_its_own_row_of_the_gathered_states(rank, monkeypatch):
    rows = []
    for r in range(2):
        seed_step(9, r, 3)
        rows.append(local_rng_state())
        rows[-1]["expected"] = torch.tensor(draws(), dtype=torch.float64)
    stacked = {k: torch.stack([row[k] for row in rows]) for k in rows[0]}
    expected = stacked.pop("expected")[rank]
    monkeypatch.setattr(randomness, "rank", lambda: rank)
    monkeypatch.setattr(randomness, "world_size", lambda: 2)
    seed_step(0, 0, 0)
    assert restore_rng_states(stacked)  # rows at a storage offset: torch.set_rng_state needs a copy
    assert torch.equal(torch.tensor(draws(), dtype=torch.float64), expected)
    monkeypatch.setattr(randomness, "world_size", lambda: 3)
    assert not restore_rng_states(stacked), "another world size: nothing restored"
