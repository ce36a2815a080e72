"""Small Lightning callbacks: data position, throughput in the progress bar, periodic and final checkpoints,
disk room, checkpoint settings changed or the run folder moved on a resume."""

from __future__ import annotations

import ast
import os
import shutil
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar


class DataPosition(Callback):
    """Owns the loader's position: advances it after each processed batch, saves it in every checkpoint
    and puts it back before the first batch of a resumed run.

    It advances before ModelCheckpoint runs (Lightning orders that callback last), so a checkpoint
    written at the end of a batch records that batch as consumed. Lightning's own restore of a stateful
    loader is not enough: it only applies when the loader is created after the checkpoint is read, and
    with an epoch budget `estimated_stepping_batches` creates it before (measured: resuming in the middle
    of epoch 1 replayed the epoch's first batches).
    """

    def __init__(self) -> None:
        self.loader = None
        self.restored: dict[str, int] | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.loader = trainer.train_dataloader
        if self.restored is not None:
            self.loader.load_state_dict(self.restored)
            self.restored = None

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        trainer.train_dataloader.advance()

    def state_dict(self) -> dict[str, int]:
        return self.loader.state_dict() if self.loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.restored = dict(state_dict) or None


class Throughput(Callback):
    """Images per second (all ranks) and the share of each step spent waiting for data."""

    def __init__(self, smoothing: float = 0.9) -> None:
        self.smoothing = smoothing
        self._last_end: float | None = None
        self._wait = 0.0
        self._rate: float | None = None
        self._wait_share: float | None = None

    def on_train_epoch_start(self, *args) -> None:
        self._last_end = None  # do not count the time between epochs as a step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._wait = time.perf_counter() - self._last_end if self._last_end is not None else 0.0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._last_end is not None:
            cycle = max(now - self._last_end, 1e-9)
            rate = len(batch["ids"]) * trainer.world_size / cycle
            share = 100.0 * self._wait / cycle
            s = self.smoothing
            self._rate = rate if self._rate is None else s * self._rate + (1 - s) * rate
            self._wait_share = share if self._wait_share is None else s * self._wait_share + (1 - s) * share
            pl_module.log("img/s", self._rate, prog_bar=True, on_step=True, on_epoch=False)
            pl_module.log("wait%", self._wait_share, prog_bar=True, on_step=True, on_epoch=False)
        self._last_end = now


class FinalCheckpoint(Callback):
    """Writes `last.ckpt` when training ends, also when it ends between periodic checkpoints; not when
    the run stopped to be requeued (`cancelled`, engine/requeue.py): it resumes from its step checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.written = False  # by this process's Trainer (a resume with nothing left to train writes none)
        self.cancelled = False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.cancelled:
            return
        trainer.save_checkpoint(self.path, weights_only=False)
        self.written = True


def checkpoint_bytes(module: torch.nn.Module) -> int:
    """About the size of one training checkpoint: the module's state (weights, EMA copies, queues) and
    two optimizer moments per trainable weight (AdamW's; the other optimizers keep at most that)."""
    state = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    moments = sum(2 * p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)
    return state + moments


def free_bytes(folder: Path) -> int:
    """Free space where `folder` is or will be (its nearest existing parent)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def disk_room_warning(per_checkpoint: int, saves_left: int, keep: int | None, free: int, folder: Path) -> str | None:
    """The warning to print when the checkpoints still to come need more than `free` bytes, else None."""
    kept = saves_left if keep is None else min(keep, saves_left)
    need = per_checkpoint * (kept + 1)  # + last.ckpt (or, when keeping N, the new file written before the oldest goes)
    if need <= free:
        return None
    what = f"{kept} periodic checkpoints and last.ckpt" if kept else "last.ckpt"
    return (f"disk: the checkpoints still to come need about {human_size(need)} ({what}, about {human_size(per_checkpoint)} each) "
            f"but {folder} has {human_size(free)} free, and a full disk stops the run at a save; keep fewer "
            f"(keep_checkpoints, --keep-checkpoints N) or save less often (checkpoint_every_epochs)")


def human_size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


class DiskRoom(Callback):
    """Warns before the first step when the run's checkpoints will not fit on its disk: a full disk
    stops a run at a save, possibly days in (the atomic write keeps the last good checkpoint)."""

    def __init__(self, folder: Path, every_steps: int, keep: int | None) -> None:
        self.folder, self.every_steps, self.keep = Path(folder), every_steps, keep

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        saves_left = trainer.max_steps // self.every_steps - trainer.global_step // self.every_steps
        message = disk_room_warning(checkpoint_bytes(pl_module), saves_left, self.keep, free_bytes(self.folder), self.folder)
        if message is not None:
            warnings.warn(message, stacklevel=1)


def checkpoint_plan(state_key: str) -> str:
    """ "every N steps, keeping all" from a ModelCheckpoint state key (Lightning writes its settings as a
    dict repr); the key itself when it reads otherwise."""
    try:
        settings = ast.literal_eval(state_key.removeprefix("ModelCheckpoint"))
        kept = "the newest ones" if settings.get("monitor") else "all"
        steps, epochs = settings.get("every_n_train_steps"), settings.get("every_n_epochs")
    except (ValueError, SyntaxError, AttributeError):
        return state_key
    return f"every {f'{steps} steps' if steps else f'{epochs} epochs'}, keeping {kept}"


def rebased_checkpoint_paths(state: dict, folder: str) -> dict:
    """ModelCheckpoint's saved state with the paths of its files moved from the folder they were written in
    to `folder` (same names): Lightning drops the whole list when the folder differs, and the files it
    listed would then never be pruned."""
    before = state.get("dirpath")
    if not before or before == folder:
        return state

    def moved(path):
        return str(Path(folder) / Path(path).name) if path and Path(path).parent == Path(before) else path

    paths = ("best_model_path", "kth_best_model_path", "last_model_path")
    return {
        **state,
        **{key: moved(state[key]) for key in paths if key in state},
        "best_k_models": {moved(path): score for path, score in state.get("best_k_models", {}).items()},
        "dirpath": folder,
    }


class RollingCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose keep_checkpoints pruning also removes the file the run resumed from. Lightning
    never deletes that file (it guards a checkpoint a user resumed from elsewhere), so each requeue of a
    killed run left one more file outside the pruning (about 1 GB for a ViT-B run). Here that file is one of
    the run's own, in its own folder, and a newer one has been written (atomically) before it goes."""

    def _generate_state_key(self, **kwargs: object) -> str:
        # the key checkpoints written with Lightning's class carry, so their pruning list is restored on resume
        return f"ModelCheckpoint{kwargs!r}"

    def save_now(self, trainer: L.Trainer) -> None:
        """This step's checkpoint outside the schedule (SLURM's warning signal), named and pruned like the
        scheduled ones; a scheduled save of the same step then skips (Lightning notes the step saved)."""
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))

    def _should_remove_checkpoint(self, trainer: L.Trainer, previous: str, current: str) -> bool:
        resumed_from = trainer.ckpt_path
        if resumed_from is not None and previous != current and self.dirpath is not None:
            previous_path = os.path.realpath(previous)  # Lightning keeps dirpath as a real path
            if previous_path == os.path.realpath(resumed_from) and os.path.dirname(previous_path) == os.path.realpath(self.dirpath):
                return True
        return super()._should_remove_checkpoint(trainer, previous, current)


class CheckpointSettings(Callback):
    """On a resume whose checkpoint frequency or keep_checkpoints differs from the run's so far, says what
    that means: the files written before stay, outside the new pruning. (Lightning's own warning asks for
    the old callback to be passed, which a user cannot do; quiet_lightning hides it.) A run folder moved
    (another disk, another machine) keeps pruning the files it wrote before."""

    def __init__(self, periodic: ModelCheckpoint) -> None:
        self.periodic = periodic

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # runs before the callbacks' load_state_dict, so the periodic callback reads the rebased paths
        states = checkpoint.get("callbacks", {})
        if self.periodic.state_key in states and self.periodic.dirpath is not None:
            states[self.periodic.state_key] = rebased_checkpoint_paths(states[self.periodic.state_key], self.periodic.dirpath)
        before = [key for key in checkpoint.get("callbacks", {}) if key.startswith("ModelCheckpoint")]
        if not trainer.is_global_zero or not before or self.periodic.state_key in before:
            return
        warnings.warn(
            f"resume: checkpoints were written {checkpoint_plan(before[0])} up to step {checkpoint.get('global_step')}, "
            f"from here {checkpoint_plan(self.periodic.state_key)}; the ones written before stay on disk, "
            f"outside keep_checkpoints' pruning", stacklevel=1)  # fmt: skip


class ProgressBar(TQDMProgressBar):
    """tqdm bar with loss, img/s and data-wait %, without Lightning's version number."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
