"""Seeds of a training step, and the RNG states a checkpoint carries.

Why a resume is exact: every random draw of training happens inside a step, and each step starts by
reseeding from (run seed, step index) alone; the step index is the loader's position, which the
checkpoint carries. A resumed step therefore draws exactly what the uninterrupted run drew, whatever
the generators held when the process died. Two streams per step:

- shared (`rank=None`): identical on every rank. The engine augments the whole global batch with it
  and keeps each rank's slice, and `nn.batch_random` draws masks and picks for the global batch from
  it, so N ranks x batch B draw what one process with batch N x B draws.
- local (`rank=r`): different on every rank, for any other draw a method makes (such draws make a
  multi-process run differ from a one-process run, never a resumed run from an uninterrupted one).

The python, numpy and torch (CPU and CUDA) generator states of every rank are still saved in each
checkpoint and restored on resume, so code that draws outside a step (a user's callback) continues
its stream too; training does not depend on them.
"""

from __future__ import annotations

import random
import numpy as np
import torch

from hybridssl.nn.distributed import gather_no_grad, rank, world_size


def step_seed(seed: int, rank: int | None, step: int, purpose: int = 0) -> int:
    """A 63-bit seed, well mixed (no two (rank, step, purpose) share one), stable across versions.
    `rank=None` is the stream shared by all ranks; `step=-1` is before training (initial weights);
    `purpose` 1 seeds `nn.batch_random`'s generator, so it is not a copy of the global generators."""
    words = [seed, 0 if rank is None else rank + 1, step + 1, purpose]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


def seed_step(seed: int, rank: int | None, step: int) -> int:
    """Seeds python, numpy and torch (all devices) for one stream of one step; returns the seed."""
    value = step_seed(seed, rank, step)
    torch.manual_seed(value)
    random.seed(value)
    np.random.seed(value % 2**32)
    return value


# ----------------------------------------------------------------------------- states in checkpoints


def local_rng_state() -> dict[str, torch.Tensor]:
    """This process's generator states as tensors (weights_only loading accepts no numpy objects)."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": torch.tensor([version, *mt], dtype=torch.int64),
        "python_gauss": torch.tensor([gauss is not None, gauss or 0.0], dtype=torch.float64),
        "numpy": torch.tensor([*keys.tolist(), pos, has_gauss], dtype=torch.int64),
        "numpy_gauss": torch.tensor([cached], dtype=torch.float64),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def gather_rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """Every rank's states, stacked in rank order (world x ...); a collective: all ranks must call it."""
    local = local_rng_state()
    # NCCL gathers only device tensors; uint8 states travel as they are
    return {k: gather_no_grad(v.unsqueeze(0).to(device)).cpu() for k, v in sorted(local.items())}


def restore_rng_states(states: dict[str, torch.Tensor]) -> bool:
    """Restores this rank's row of `states`; False (nothing restored) when the world size changed."""
    if not states or states["torch"].shape[0] != world_size():
        return False
    r = rank()
    py = states["python"][r].tolist()
    has_gauss, gauss = states["python_gauss"][r].tolist()
    random.setstate((py[0], tuple(py[1:]), gauss if has_gauss else None))
    keys, (pos, has_np_gauss) = states["numpy"][r, :-2], states["numpy"][r, -2:].tolist()
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_np_gauss, states["numpy_gauss"][r].item()))
    # a copy: torch.set_rng_state crashes on a view at a storage offset (measured: segfault on rank 1)
    torch.set_rng_state(states["torch"][r].clone())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"][r].clone())
    return True

