"""One generic LightningModule around any Method: views, losses, optimizer, schedule, metadata."""

from __future__ import annotations

import random
from dataclasses import asdict
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from hybridssl import __version__
from hybridssl.config import RunConfig
from hybridssl.data.sources import DataInfo
from hybridssl.engine.optim import WarmupCosine
from hybridssl.methods.base import Batch, Method


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message carries the step."""


def seed_step(seed: int, rank: int, step: int) -> None:
    """Every random draw of a step (views, masks, queue sampling) follows from (seed, rank, step),
    so a resumed run replays exactly what the uninterrupted one would have drawn."""
    value = ((seed * 1_000_003 + rank) * 1_000_033 + step) % (2**63 - 1)
    torch.manual_seed(value)
    random.seed(value)
    np.random.seed(value % 2**32)


class PretrainModule(L.LightningModule):
    def __init__(self, method: Method, run: RunConfig, info: DataInfo) -> None:
        super().__init__()
        self.method = method
        self.run = run
        self.info = info

    @property
    def total_steps(self) -> int:
        return max(1, int(self.trainer.estimated_stepping_batches))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        step_index = self.current_epoch * self.trainer.num_training_batches + batch_idx
        seed_step(self.run.seed, self.global_rank, step_index)
        views = self.method.views(batch["images"])
        losses = self.method(Batch(views, batch["ids"], batch["labels"]))
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"the loss became {loss.item()} at step {self.global_step}")
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, on_step=True, on_epoch=False)
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, logger=False)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        opt = self.run.optim
        world = self.trainer.world_size
        effective_batch = self.run.batch_size * self.run.accumulate_grad_batches * world * self.method.lr_views
        lr = opt.base_lr * effective_batch / 256
        groups = self.method.param_groups(opt.weight_decay)
        for group in groups:
            group["lr"] = lr * group["lr_scale"]
        fused = torch.cuda.is_available() and all(p.is_cuda for g in groups for p in g["params"])
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=opt.betas, fused=fused or None)
        total = self.total_steps
        steps_per_epoch = max(1, self.trainer.num_training_batches // self.run.accumulate_grad_batches)
        warmup = int(opt.warmup_epochs * steps_per_epoch) if opt.warmup_epochs is not None else int(opt.warmup_fraction * total)
        schedule = WarmupCosine(total, min(warmup, total), opt.min_lr_fraction)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.method.after_step(progress=min(1.0, (self.global_step + 1) / self.total_steps))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["hybridssl"] = {
            "version": __version__,
            "config": self.run.dump(),
            "data_info": asdict(self.info),
            "encoder": self.method.encoder.cfg.to_dict(),
            "finished": bool(self.trainer.fit_loop.done) if self._trainer is not None else False,
        }
