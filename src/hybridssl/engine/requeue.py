"""SLURM's warning (hybridssl/slurm.py) during pretraining: the run finishes the optimizer step it is in,
writes that step's checkpoint, stops and requeues its job, whose `--resume` continues from there exactly.

Lightning's own auto-requeue is kept from acting (our handler is installed first, and Lightning installs
its own only where none is): it saves from inside the signal handler, in the middle of a step (an
accumulation half done, the data position one batch ahead), into an `hpc_ckpt_N.ckpt` that `--resume`
does not read, so a requeued run lost everything since its last periodic checkpoint.

SIGTERM (engine/termination.py) stops a run at the same place, with the same checkpoint, but ends the
command with a resume hint instead of requeueing the job.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback

from hybridssl.engine.callbacks import FinalCheckpoint, RollingCheckpoint
from hybridssl.engine.termination import TERMINATION
from hybridssl.slurm import WARNING


class RequeueOnSignal(Callback):
    """Acts on SLURM's warning or a SIGTERM at the end of an optimizer step, where a checkpoint is the
    same as a periodic one. Every rank must stop at the same step, and a signal reaches the ranks at
    slightly different moments (or only one of them: Kubernetes signals the container's first process):
    they agree on it at each step (one small all-reduce, beside the sync of the loss check that each step
    already makes), and on which signal it was only when they stop."""

    def __init__(self, periodic: RollingCheckpoint, final: FinalCheckpoint) -> None:
        self.periodic, self.final = periodic, final
        self.stopped_at: int | None = None  # the step whose checkpoint the requeued job resumes from
        self.terminated = False  # stopped by SIGTERM (on any rank), not by SLURM's warning
        self._last_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = trainer.global_step
        TERMINATION.defer_to_step_ends()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        TERMINATION.defer_to_step_ends(False)  # (a normal end: train_run, once last.ckpt is written)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self._last_step:  # inside a gradient accumulation: no step ended
            return
        self._last_step = trainer.global_step
        if trainer.global_step >= trainer.max_steps:  # the budget's end: last.ckpt comes anyway
            return
        if not trainer.strategy.reduce_boolean_decision(WARNING.received or TERMINATION.received, all=False):
            return
        self.terminated = trainer.strategy.reduce_boolean_decision(TERMINATION.received, all=False)
        # DataPosition has advanced (it runs first); saved before the stop, the checkpoint is not marked finished
        self.periodic.save_now(trainer)
        self.final.cancelled = True  # a last.ckpt would read as a finished run
        trainer.should_stop = True
        self.stopped_at = trainer.global_step

    def checkpoint(self) -> str:
        return self.periodic.format_checkpoint_name({"step": self.stopped_at})
