"""SLURM's warning before a time limit (`#SBATCH --signal=SIGUSR1@90 --requeue`): the run finishes the
optimizer step it is in, writes that step's checkpoint, stops and requeues its job, whose `--resume`
continues from there exactly. A warning that comes between two fits (MAE-CT's stages, compare's methods
and evaluations) requeues there.

Lightning's own auto-requeue is kept from acting (our handler is installed first, and Lightning installs
its own only where none is): it saves from inside the signal handler, in the middle of a step (an
accumulation half done, the data position one batch ahead), into an `hpc_ckpt_N.ckpt` that `--resume`
does not read, so a requeued run lost everything since its last periodic checkpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import warnings
from types import FrameType

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.callbacks import Callback

from hybridssl.engine.callbacks import FinalCheckpoint, RollingCheckpoint
from hybridssl.errors import RunRequeued

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


class RequeueOnSignal(Callback):
    """Acts on the warning at the end of an optimizer step, where a checkpoint is the same as a periodic
    one. Every rank must stop at the same step, and the signal reaches the ranks at slightly different
    moments: they agree on it at each step (one small all-reduce, beside the sync of the loss check that
    each step already makes)."""

    def __init__(self, periodic: RollingCheckpoint, final: FinalCheckpoint) -> None:
        self.periodic, self.final = periodic, final
        self.stopped_at: int | None = None  # the step whose checkpoint the requeued job resumes from
        self._last_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self._last_step:  # inside a gradient accumulation: no step ended
            return
        self._last_step = trainer.global_step
        if trainer.global_step >= trainer.max_steps:  # the budget's end: last.ckpt comes anyway
            return
        if not trainer.strategy.reduce_boolean_decision(WARNING.received, all=False):
            return
        # DataPosition has advanced (it runs first); saved before the stop, the checkpoint is not marked finished
        self.periodic.save_now(trainer)
        self.final.cancelled = True  # a last.ckpt would read as a finished run
        trainer.should_stop = True
        self.stopped_at = trainer.global_step

    def checkpoint(self) -> str:
        return self.periodic.format_checkpoint_name({"step": self.stopped_at})


def slurm_job() -> str:
    """This job's id as scontrol names it (an array task's is JOBID_TASKID)."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ["SLURM_JOB_ID"]


def requeue(where: str, ask: bool) -> None:
    """Ends the command with RunRequeued, first asking SLURM to requeue the job when `ask` (rank 0 of a
    fit asks for all ranks; between fits, the single task of a one-task job).
    Nothing after this runs (no later stage, no evaluation) in the time SLURM has left."""
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
        raise RunRequeued(f"{where}; job {job} requeued: it continues from there if its command has --resume", requeued=True)
    warnings.warn(f"requeue: `scontrol requeue {job}` failed ({problem})", stacklevel=2)
    raise RunRequeued(f"{where}; the job could not be requeued: run the same command with --resume", requeued=False)


def requeue_if_warned(before: str) -> None:
    """Between two fits: a warning noted since the last step is acted on here, in a one-task job. With
    several tasks it is left to the next fit's first step, where the ranks agree on it: one rank alone
    leaving here would leave the others waiting in the next fit's setup."""
    if WARNING.received and under_slurm() and int(os.environ.get("SLURM_NTASKS", "1")) == 1:
        requeue(f"stopped before {before}", ask=True)
