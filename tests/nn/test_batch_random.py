"""Per-sample draws: rank r of N, with batch B, gets rows rB..(r+1)B of the one-process draw of N x B."""

import pytest
import torch

import hybridssl.nn.batch_random as br


def fake_world(monkeypatch, rank: int, world: int) -> None:
    monkeypatch.setattr(br, "rank", lambda: rank)
    monkeypatch.setattr(br, "world_size", lambda: world)


@pytest.mark.parametrize("draw", ["rand", "randint"])
def test_each_rank_draws_its_own_rows_of_the_global_batch(monkeypatch, draw):
    def sample(batch):
        with br.shared_stream(11):
            first = br.batch_rand(batch, 3) if draw == "rand" else br.batch_randint(5, batch, 2, 3)
            second = br.batch_rand(batch, 3) if draw == "rand" else br.batch_randint(5, batch, 2, 3)
        return first, second

    one_process = sample(12)  # global batch 12 in one process
    for world in (2, 3):
        for r in range(world):
            fake_world(monkeypatch, r, world)
            local = sample(12 // world)
            rows = slice(r * 12 // world, (r + 1) * 12 // world)
            assert all(torch.equal(a, b[rows]) for a, b in zip(local, one_process)), (world, r)
    assert not torch.equal(one_process[0], one_process[1]), "the stream advances between draws"


def test_draws_outside_a_shared_stream_follow_the_global_generator_and_the_stream_is_seeded():
    torch.manual_seed(5)
    a = br.batch_randint(7, 4, 3)
    torch.manual_seed(5)
    assert torch.equal(a, torch.randint(0, 7, (4, 3))) and a.max() < 7
    with br.shared_stream(3):
        b = br.batch_randint(7, 4, 3)
    with br.shared_stream(3):
        assert torch.equal(b, br.batch_randint(7, 4, 3))
    with br.shared_stream(4):
        assert not torch.equal(b, br.batch_randint(7, 4, 3))


def test_uniform_and_integer_draws_share_one_stream_per_device():
    with br.shared_stream(9):
        u, i, v = br.batch_rand(3, 2), br.batch_randint(5, 3, 4), br.batch_rand(3, 2, device=torch.device("cpu"))
    g = torch.Generator().manual_seed(9)
    assert torch.equal(u, torch.rand(3, 2, generator=g))
    assert torch.equal(i, torch.randint(0, 5, (3, 4), generator=g))
    assert torch.equal(v, torch.rand(3, 2, generator=g))
