"""`python tests/cli_driver.py ARGS...` = `hybridssl ARGS...` with the test-only methods registered.

With HYBRIDSSL_TEST_STALL_AT=N and HYBRIDSSL_TEST_STALL_MARKER=PATH set, the run touches PATH and
sleeps when it is about to train step N (N - 1 steps done), so a test can kill it at a known point.
With HYBRIDSSL_TEST_SIGNAL_AT=N, the run sends itself SIGUSR1 (SLURM's warning signal) as it starts
training step N, in the first batch of that step.
Lightning's DDP launcher re-runs this script for the other ranks, so they get the same methods.
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import extra_methods  # noqa: E402,F401  (registers)

from hybridssl.cli import main  # noqa: E402
from hybridssl.engine.module import PretrainModule  # noqa: E402
from subprocess_runs import signalling_step  # noqa: E402


def stall_at(step: int, marker: Path) -> None:
    original = PretrainModule.training_step

    def stalling(self, batch, batch_idx):
        if self.global_step + 1 == step:
            marker.touch()
            time.sleep(3600)
        return original(self, batch, batch_idx)

    PretrainModule.training_step = stalling


if __name__ == "__main__":
    if os.environ.get("HYBRIDSSL_TEST_SIGNAL_AT"):
        PretrainModule.training_step = signalling_step(PretrainModule.training_step, int(os.environ["HYBRIDSSL_TEST_SIGNAL_AT"]))
    if os.environ.get("HYBRIDSSL_TEST_STALL_AT"):
        stall_at(int(os.environ["HYBRIDSSL_TEST_STALL_AT"]), Path(os.environ["HYBRIDSSL_TEST_STALL_MARKER"]))
    sys.exit(main(sys.argv[1:]))
