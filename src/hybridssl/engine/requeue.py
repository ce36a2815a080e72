"""SLURM's warning (hybridssl/slurm.py) during pretraining: the run finishes the optimizer step it is in,
writes that step's checkpoint, stops and requeues its job, whose `--resume` continues from there exactly.

Lightning's own auto-requeue is kept from acting (our handler is installed first, and Lightning installs
its own only where none is): it saves from inside the signal handler, in the middle of a step (an
accumulation half done, the data position one batch ahead), into an `hpc_ckpt_N.ckpt` that `--resume`
does not read, so a requeued run lost everything since its last periodic checkpoint.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback

from hybridssl.engine.callbacks import FinalCheckpoint, RollingCheckpoint
from hybridssl.slurm import WARNING


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
