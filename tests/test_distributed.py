"""Two CPU processes (gloo): gathered negatives and the queue match one process on the global batch."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hybridssl.losses import info_nce, nnclr, nt_xent
from hybridssl.nn.queue import FeatureQueue

pytestmark = pytest.mark.ddp
B, D, WORLD = 4, 8, 2


def global_batch():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(WORLD * B, D, generator=g) for _ in range(3)]


def losses(a, b, c):
    return {
        "nt_xent": nt_xent(a, b, 0.5),
        "info_nce": info_nce(a, c, 0.2, scale=0.4),
        "nnclr": nnclr(a, c, 0.15),
    }


def worker(rank: int, init_file: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    a, b, c = (x[rank * B : (rank + 1) * B].clone().requires_grad_(True) for x in global_batch())
    out = {}
    for name, loss in losses(a, b, c).items():
        grads = [g if g is not None else torch.zeros_like(x) for g, x in zip(torch.autograd.grad(loss, [a, b], allow_unused=True), [a, b])]
        # each rank's loss is the mean over its own anchors; summed over ranks / WORLD = global mean
        total = loss.detach().clone()
        dist.all_reduce(total)
        out[name] = (total.item() / WORLD, [g.clone() for g in grads])
    q = FeatureQueue(size=4 * WORLD * B, dim=D)
    torch.manual_seed(0)
    q.features.normal_()
    q.enqueue(a.detach(), torch.arange(B) + rank * B)
    out["queue"] = (q.features.clone(), q.ids.clone(), q.ptr.item())
    results[rank] = out
    dist.destroy_process_group()


def test_two_ranks_match_one_process(tmp_path):
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(worker, args=(str(tmp_path / "init"), results), nprocs=WORLD, join=True)
    a, b, c = (x.clone().requires_grad_(True) for x in global_batch())
    for name, loss in losses(a, b, c).items():
        ga, gb = (g if g is not None else torch.zeros_like(x) for g, x in zip(torch.autograd.grad(loss, [a, b], allow_unused=True), [a, b]))
        for rank in range(WORLD):
            value, (ra, rb) = results[rank][name]
            assert value == pytest.approx(loss.item(), rel=1e-5), name
            # DDP averages gradients over ranks: each rank's gradient / WORLD is the global one
            assert torch.allclose(ra / WORLD, ga[rank * B : (rank + 1) * B], atol=1e-6), name
            assert torch.allclose(rb / WORLD, gb[rank * B : (rank + 1) * B], atol=1e-6), name
    for rank in range(WORLD):
        feats, ids, ptr = results[rank]["queue"]
        assert ptr == WORLD * B and ids[: WORLD * B].tolist() == list(range(WORLD * B))
        assert torch.allclose(feats[: WORLD * B], torch.nn.functional.normalize(a.detach(), dim=1), atol=1e-6)
