"""Collectives for contrastive losses, queues, BatchNorm statistics and the fine-tune loop, identity when
not distributed; and joining a torchrun launch."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor

from hybridssl.errors import ConfigError


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def launched_rank() -> int:
    """This process's rank as its launcher set it (torchrun, SLURM), known before any process group exists."""
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if name in os.environ:
            return int(os.environ[name])
    return 0


def launched_world_size() -> int:
    """The number of processes a torchrun-style launcher started (its WORLD_SIZE; 1 without one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_per_node() -> int:
    """The processes the launcher started on this node (its LOCAL_WORLD_SIZE; 1 without one)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def sum_over_processes(values: Tensor) -> Tensor:
    """Elementwise sum over every process, without gradient (itself when there is one); sent from the
    device under nccl, from the CPU under gloo, and returned on `values`' device."""
    if world_size() == 1:
        return values
    sent = values.detach().to(values.device if dist.get_backend() == "nccl" else torch.device("cpu"), copy=True)
    dist.all_reduce(sent)
    return sent.to(values.device)


def every_process(value: object) -> list:
    """Every process's `value` (picklable), in rank order; a one-element list when there is one."""
    if world_size() == 1:
        return [value]
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def same_on_every_process(value: object, what: str) -> object:
    """`value`, checked to be equal on every process (each process decided it from files it read); all
    raise together when they differ, so none waits forever in a collective the others skipped."""
    seen = every_process(value)
    if any(v != seen[0] for v in seen):
        raise ConfigError(f"the processes disagree on {what} ({seen}): every node must see the same output folder and checkpoint")
    return value


@contextmanager
def launched_processes() -> Iterator[None]:
    """Joins the process group of a torchrun-style launch (WORLD_SIZE, RANK, MASTER_ADDR, MASTER_PORT and,
    on GPUs, LOCAL_RANK) for the block (nccl on GPUs, gloo on CPUs) and leaves it after; nothing without a
    launch or when a group exists. Pretraining gets this from Lightning; the fine-tune loop is our own."""
    if launched_world_size() <= 1 or dist.is_initialized():
        yield
        return
    cuda = torch.cuda.is_available()
    if cuda:
        if "LOCAL_RANK" not in os.environ:  # every process would take GPU 0
            raise ConfigError("WORLD_SIZE is set but LOCAL_RANK is not: launch with torchrun, or set LOCAL_RANK per process")
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the gradients of every rank and returns this rank's slice.

    Written here because torch.distributed.nn.functional.all_gather, which does the same, is
    deprecated; lightly and solo-learn ship the same few lines.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.batch = x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.batch
        return grad[start : start + ctx.batch]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenates `x` from every rank (rank order); gradients flow back to each rank's own slice.

    The backward sums the incoming gradients over ranks, so with DDP's gradient averaging the update
    equals one process computing the loss on the global batch (tests/test_distributed.py).
    """
    return x if world_size() == 1 else _GatherWithGrad.apply(x)


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    """Concatenates `x` from every rank (rank order), without gradient (keys, queue entries)."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


class _AllReduceSumWithGrad(torch.autograd.Function):
    """Sum over ranks; the backward sums the incoming gradients too (d(sum of every rank's loss) /
    d(this rank's input) reaches this rank through every rank's use of the sum)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_sum_with_grad(x: Tensor) -> Tensor:
    """Sum of `x` over ranks (identity when not distributed), differentiable (BatchNorm statistics)."""
    return x if world_size() == 1 else _AllReduceSumWithGrad.apply(x)
