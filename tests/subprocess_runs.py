"""Runs the CLI in a subprocess (tests/cli_driver.py: the test-only methods registered)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

DRIVER = Path(__file__).parent / "cli_driver.py"
SRC = Path(__file__).parents[1] / "src"
# one thread per process: on a busy 2-core machine two spin-waiting threads made a step 25x slower
# (measured); in-process runs of the same tests set the same, so sums are bit-identical
THREADS = 1


def driver_env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(THREADS), "PYTHONWARNINGS": "ignore", **extra}


def start_driver(args: list[str], **env: str) -> subprocess.Popen:
    """Starts `hybridssl ARGS` in its own process group (so a kill reaches every DDP rank)."""
    return subprocess.Popen(
        [sys.executable, str(DRIVER), *args], env=driver_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


def run_driver(args: list[str], timeout: float = 600) -> str:
    """Runs `hybridssl ARGS` to the end; returns its output; fails the test on a non-zero exit."""
    proc = start_driver(args)
    out, _ = proc.communicate(timeout=timeout)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-4000:]
    return text


@contextmanager
def threads(n: int = THREADS) -> Iterator[None]:
    """torch's intra-op threads set to `n` for a block, then put back (module fixtures of other test
    files compare bit for bit with runs made at the thread count they started with)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def signalling_step(original, step: int):
    """A training_step that sends its process SIGUSR1 (SLURM's warning) once, as step `step` starts (its
    first batch), then trains as `original` does."""
    sent = []

    def signalling(self, batch, batch_idx):
        if self.global_step + 1 == step and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGUSR1)
        return original(self, batch, batch_idx)

    return signalling
