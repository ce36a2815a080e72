"""SLURM's warning before a time limit (`#SBATCH --signal=SIGUSR1@90 --requeue`), for every command that
can stop cleanly and continue: pretraining at an optimizer step's end (engine/requeue.py), a fine-tune at
an epoch's end, and compare and evaluate between two fits or protocols. The place that stops asks SLURM to
requeue the job, whose same command continues from there.

Here, beside nn (whose collectives it uses) and below every layer that acts on it, because pretraining
(engine) and fine-tuning (evaluation) both do.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import warnings
from types import FrameType

from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

from hybridssl.errors import RunRequeued
from hybridssl.nn.distributed import world_size

WARNING_SIGNAL = getattr(signal, "SIGUSR1", None)  # what `--signal=SIGUSR1@N` sends; Windows has none


def under_slurm() -> bool:
    """SLURM tasks started by srun, as Lightning decides (an interactive shell is not; torchrun inside a
    job is torchrun's, which Lightning prefers)."""
    return WARNING_SIGNAL is not None and SLURMEnvironment.detect() and not TorchElasticEnvironment.detect()


class WarningSignal:
    """SLURM sends its warning once, at any moment of the process: one process-wide handler notes it, and
    each place that can stop cleanly (a step's end, the gap between two fits) looks."""

    def __init__(self) -> None:
        self.received = False
        self.listening = False

    def listen(self) -> bool:
        """Under SLURM, notes the warning from here on instead of dying of it; whether it is noted."""
        if not self.listening and under_slurm() and threading.current_thread() is threading.main_thread():
            signal.signal(WARNING_SIGNAL, self._note)  # handlers can be set from the main thread only
            self.listening = True
        return self.listening

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.received = True


WARNING = WarningSignal()


def slurm_job() -> str:
    """This job's id as scontrol names it (an array task's is JOBID_TASKID)."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ["SLURM_JOB_ID"]


def requeue(where: str, ask: bool) -> None:
    """Ends the command with RunRequeued, first asking SLURM to requeue the job when `ask` (rank 0 of a
    fit asks for all ranks; between fits, the single task of a one-task job). Nothing after this runs
    (no later stage, epoch or evaluation) in the time SLURM has left; the CLI says how the job goes on."""
    WARNING.received = False  # acted on (a process that goes on, as a test does, starts clean)
    if not ask:
        raise RunRequeued("", requeued=True)
    job = os.environ.get("SLURM_JOB_ID") and slurm_job()
    try:
        done = subprocess.run(["scontrol", "requeue", job], check=False, capture_output=True, text=True, timeout=60) if job else None
    except (OSError, subprocess.TimeoutExpired) as exc:
        done, problem = None, str(exc)
    else:
        problem = "no SLURM_JOB_ID" if done is None else done.stderr.strip() or f"exit status {done.returncode}"
    where = f"SLURM's warning signal: {where}"
    if done is not None and done.returncode == 0:
        raise RunRequeued(f"{where}; job {job} requeued", requeued=True)
    warnings.warn(f"requeue: `scontrol requeue {job}` failed ({problem})", stacklevel=2)
    raise RunRequeued(f"{where}; the job could not be requeued", requeued=False)


def requeue_if_warned(before: str) -> None:
    """Between two fits or protocols: a warning noted since is acted on here, by a one-task job's single
    process. With several tasks or processes it is left to a place where they agree on it (the next fit's
    first step, a fine-tune epoch's end): one leaving alone would leave the others waiting in a collective."""
    if WARNING.received and under_slurm() and int(os.environ.get("SLURM_NTASKS", "1")) == 1 and world_size() == 1:
        requeue(f"stopped before {before}", ask=True)
