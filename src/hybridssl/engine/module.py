"""One generic LightningModule around any Method: views, losses, optimizer, schedule, metadata."""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from hybridssl.version import __version__
from hybridssl.config import RunConfig
from hybridssl.errors import NonFiniteLossError
from hybridssl.data.sources import DataInfo
from hybridssl.engine.optim import WarmupCosine, adamw
from hybridssl.engine.randomness import gather_rng_states, restore_rng_states, seed_step, step_seed
from hybridssl.methods.base import Batch, Method
from hybridssl.nn.batch_random import shared_stream
from hybridssl.nn.distributed import gather_no_grad, world_size

MAX_LOSS_TERMS = 32

__all__ = ["PretrainModule", "mean_over_ranks", "method_batch"]


def mean_over_ranks(losses: dict[str, Tensor]) -> dict[str, Tensor]:
    """The mean of each named value over the ranks (= its value on the global batch for per-sample
    means over equal batches), with one small all-gather that every rank can decide on alone.

    The row carries a checksum of the names: in a step where the ranks returned different names (a
    monitoring value that only some ranks could compute, like NNCLR's `nn_acc` when a rank's batch
    has no labels) the loss is still averaged and the other values are this rank's own."""
    names = ["loss", *sorted(k for k in losses if k != "loss")]
    if len(names) > MAX_LOSS_TERMS:
        raise ValueError(f"a method may return at most {MAX_LOSS_TERMS} named losses, got {len(names)}")
    if world_size() == 1:  # nothing to gather: no extra allocation or host sync in the step
        return {k: losses[k].detach().float() for k in names}
    row = torch.zeros(MAX_LOSS_TERMS + 1, device=losses["loss"].device)
    row[: len(names)] = torch.stack([losses[k].detach().float() for k in names])
    row[-1] = zlib.crc32(",".join(names).encode()) & 0xFFFFFF  # exact in float32
    rows = gather_no_grad(row.unsqueeze(0))
    if (rows[:, -1] == row[-1]).all():
        return dict(zip(names, rows[:, : len(names)].mean(0), strict=True))
    return {**{k: losses[k].detach().float() for k in names}, "loss": rows[:, 0].mean()}


def method_batch(method: Method, batch: dict[str, Any]) -> Batch:
    """A loader batch -> the method's input: its views of this rank's rows. Stored images ("images") get
    their crops cut here; streamed ones arrive as crops ("crops"). The loader may hand the whole global
    batch (identical-views mode), with `offset` where this rank's rows start."""
    ids, first = batch["ids"], batch.get("offset", 0)
    whole = method.views.finish(batch["crops"]) if "crops" in batch else method.views(batch["images"])
    views = [v[first : first + len(ids)] for v in whole]
    return Batch(views, ids, batch["labels"])


OPTIMIZER_SETTINGS = ("initial_lr", "weight_decay", "betas")


def restore_group_settings(scheduler: torch.optim.lr_scheduler.LambdaLR, settings: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """Puts this run's peak lr, weight decay and betas back into every parameter group of a restored
    optimizer (and the scheduler's base lrs); returns (setting, checkpoint's, this run's) for each group
    setting that differed."""
    changed = []
    for i, (group, own) in enumerate(zip(scheduler.optimizer.param_groups, settings, strict=True)):
        for key in OPTIMIZER_SETTINGS:
            before, after = group.get(key), own[key]
            if key != "betas" and before is not None and math.isclose(before, after, rel_tol=1e-9):
                continue
            if key == "betas" and tuple(before) == tuple(after):
                continue
            name = "peak lr" if key == "initial_lr" else key
            changed.append((f"group {i}", f"{name} {before}", f"{name} {after}"))
            group[key] = after
        scheduler.base_lrs[i] = own["initial_lr"]
    return changed


class PretrainModule(L.LightningModule):
    def __init__(self, method: Method, run_config: RunConfig, info: DataInfo, steps_per_epoch: int) -> None:
        super().__init__()
        self.method = method
        self.run_config = run_config
        self.info = info
        # from the engine's own count: the Trainer does not know its batches per epoch yet when it asks
        # for the optimizer (inf before the loader exists; it gets a step budget, not epochs)
        self.steps_per_epoch = steps_per_epoch
        self.forward_method = torch.compile(method.forward) if run_config.compile else method.forward

    @property
    def total_steps(self) -> int:
        return max(1, int(self.trainer.estimated_stepping_batches))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        # the loader's position, not Lightning's counters: it is what the checkpoint restores exactly
        step = self.trainer.train_dataloader.position
        seed = self.run_config.seed
        with shared_stream(step_seed(seed, None, step, purpose=1)):
            # the views of the global batch: the same draws on every rank (unless each rank augments its own)
            own_views = not self.run_config.global_batch_views and self.trainer.world_size > 1
            seed_step(seed, self.global_rank if own_views else None, step)
            inputs = method_batch(self.method, batch)
            seed_step(seed, self.global_rank, step)  # any other draw of the method: this rank's own
            losses = self.forward_method(inputs)
        means = mean_over_ranks(losses)
        if not torch.isfinite(means["loss"]):
            raise NonFiniteLossError(f"loss: the loss became {means['loss'].item()} at step {self.global_step + 1}")
        self.log_dict({f"train/{k}": v for k, v in means.items()}, on_step=True, on_epoch=False)
        self.log("loss", means["loss"], prog_bar=True, on_step=True, on_epoch=False, logger=False)
        return losses["loss"]

    def configure_optimizers(self) -> dict[str, Any]:
        opt = self.run_config.optim
        world = self.trainer.world_size
        effective_batch = self.run_config.batch_size * self.run_config.accumulate_grad_batches * world * self.method.lr_views
        lr = opt.base_lr * effective_batch / 256
        groups = self.method.param_groups(opt.weight_decay)
        for group in groups:
            group["lr"] = lr * group["lr_scale"]
        optimizer = adamw(groups, lr, opt.betas)
        total = self.total_steps
        if opt.warmup_epochs is not None:
            warmup = int(opt.warmup_epochs * self.steps_per_epoch)
        else:
            warmup = int(opt.warmup_fraction * total)
        self.schedule = (total, min(warmup, total), opt.min_lr_fraction)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(*self.schedule))
        # this run's own settings per group: a resume restores the checkpoint's, on_train_start puts these back
        self.group_settings = [{key: group[key] for key in OPTIMIZER_SETTINGS} for group in optimizer.param_groups]
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        """A resume restored the schedule and the optimizer settings the checkpoint was trained with; a
        run resumed with another budget (more epochs) or another lr, weight decay or betas follows its
        own from this step on (as the official MAE code, which sets the lr from its arguments each step)."""
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            changed = restore_group_settings(scheduler, self.group_settings)
            if changed:
                where, before, after = changed[0]
                more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
                rank_zero_warn(f"resume: the checkpoint was trained with {before}, this run has {after} ({where}{more}): "
                               f"this run's optimizer settings apply from step {self.global_step} on")  # fmt: skip
            for schedule in scheduler.lr_lambdas:
                schedule.total_steps, schedule.warmup_steps, schedule.min_fraction = self.schedule
            for group, base, schedule in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
                group["lr"] = base * schedule(scheduler.last_epoch)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.method.after_step(progress=min(1.0, (self.global_step + 1) / self.total_steps))

    def non_finite_state(self) -> list[str]:
        return [k for k, v in self.method.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Adds the run's metadata and every rank's RNG states; refuses to save non-finite weights (a
        finite loss can still end in an update that overflows), so every checkpoint is a good one.
        Flushes the loggers too: after a kill, the logs reach at least the last checkpoint."""
        bad = self.non_finite_state()
        if bad:
            raise NonFiniteLossError(f"loss: the weights became non-finite ({bad[0]}, ...) by step {self.global_step}")
        for logger in self.loggers:
            logger.save()
        checkpoint["hybridssl"] = {
            "version": __version__,
            "config": self.run_config.dump(),
            "data_info": asdict(self.info),
            "encoder": self.method.encoder.cfg.to_dict(),
            "pooling": self.method.pooling,
            "finished": bool(self.trainer.fit_loop.done) if self._trainer is not None else False,
            "rng": gather_rng_states(self.device),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("hybridssl", {}).get("rng")
        if states and not restore_rng_states(states):
            saved, world = len(states["torch"]), self.trainer.world_size
            rank_zero_warn(f"the checkpoint holds the RNG states of {saved} ranks, not {world}; not restored")
