"""Two CPU processes (gloo): gathered negatives and the queue match one process on the global batch."""


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


def batchnorm_worker(rank: int, init_file: str, results) -> None:
    from hybridssl.nn.batchnorm import convert_to_global_batchnorm

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    x, c = (t[rank * B : (rank + 1) * B] for t in batchnorm_data())
    x.requires_grad_(True)
    bn = convert_to_global_batchnorm(torch.nn.Sequential(batchnorm_layer()))
    loss = (bn(x) * c).mean()  # this rank's mean; DDP averages the gradients over ranks
    loss.backward()
    results[rank] = (loss.item(), x.grad.clone(), bn[0].weight.grad.clone(), bn[0].bias.grad.clone(),
                     bn[0].running_mean.clone(), bn[0].running_var.clone(), int(bn[0].num_batches_tracked))  # fmt: skip
    dist.destroy_process_group()


def batchnorm_data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(WORLD * B, D, generator=g) * 3 + 1, torch.randn(WORLD * B, D, generator=g)


def batchnorm_layer() -> torch.nn.BatchNorm1d:
    torch.manual_seed(2)
    bn = torch.nn.BatchNorm1d(D)
    torch.nn.init.normal_(bn.weight)
    torch.nn.init.normal_(bn.bias)
    return bn


def test_global_batchnorm_on_two_cpu_ranks_is_batchnorm_on_the_global_batch(tmp_path):
    """torch's SyncBatchNorm refuses CPU modules under DDP; GlobalBatchNorm gives the same statistics,
    outputs and gradients as one BatchNorm on the global batch."""
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(batchnorm_worker, args=(str(tmp_path / "init"), results), nprocs=WORLD, join=True)
    x, c = batchnorm_data()
    x.requires_grad_(True)
    bn = batchnorm_layer()
    loss = (bn(x) * c).mean()
    loss.backward()
    assert sum(results[r][0] for r in range(WORLD)) / WORLD == pytest.approx(loss.item(), rel=1e-5)
    for rank in range(WORLD):
        _, gx, _, _, mean, var, tracked = results[rank]
        assert torch.allclose(gx / WORLD, x.grad[rank * B : (rank + 1) * B], atol=1e-6)
        assert torch.allclose(mean, bn.running_mean, atol=1e-6) and torch.allclose(var, bn.running_var, atol=1e-5)
        assert tracked == 1
    weight = sum(results[r][2] for r in range(WORLD)) / WORLD
    bias = sum(results[r][3] for r in range(WORLD)) / WORLD
    assert torch.allclose(weight, bn.weight.grad, atol=1e-6) and torch.allclose(bias, bn.bias.grad, atol=1e-6)


def loss_names_worker(rank: int, init_file: str, results) -> None:
    from hybridssl.engine.module import mean_over_ranks

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    same = mean_over_ranks({"loss": torch.tensor(1.0 + rank), "b": torch.tensor(10.0 * rank)})
    # a monitoring value only rank 1 could compute this step: no hang, the loss still averaged
    extra = {"nn_acc": torch.tensor(0.5)} if rank == 1 else {}
    differ = mean_over_ranks({"loss": torch.tensor(2.0 * rank), **extra})
    results[rank] = ({k: v.item() for k, v in same.items()}, {k: v.item() for k, v in differ.items()})
    dist.destroy_process_group()


def test_losses_are_averaged_over_ranks_even_when_their_names_differ(tmp_path):
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(loss_names_worker, args=(str(tmp_path / "init"), results), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        same, differ = results[rank]
        assert same == {"loss": 1.5, "b": 5.0}
        assert differ == ({"loss": 1.0} if rank == 0 else {"loss": 1.0, "nn_acc": 0.5})
