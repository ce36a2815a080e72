"""Test-only methods, registered when this module is imported (tests/conftest.py imports it).

`toy-queue-ema` holds, in a few lines, every kind of state a resume must carry in the MoCo / NNCLR /
MAE-CT / MACRL family: an EMA copy (with BatchNorm buffers), a feature queue with its pointer, a
random mask and a random top-k pick among the queue's neighbours. It lets the engine's resume, queue
and DDP guarantees be tested before (and independently of) the real queue methods.
"""

from __future__ import annotations

import torch
from pydantic import Field, PositiveInt
from torch import Tensor, nn

from hybridssl.data.views import crop_flip
from hybridssl.losses import nnclr
from hybridssl.methods.base import Batch, Method, MethodConfig, register
from hybridssl.nn.heads import mlp
from hybridssl.nn.masking import random_mask
from hybridssl.nn.momentum import EMA
from hybridssl.nn.queue import FeatureQueue
from hybridssl.nn.vit import pool


class ToyQueueEMAConfig(MethodConfig):
    queue_size: PositiveInt = 48
    topk: PositiveInt = 4
    momentum: float = Field(0.9, ge=0, le=1)
    mask_ratio: float = Field(0.5, ge=0, lt=1)


@register
class ToyQueueEMA(Method):
    name = "toy-queue-ema"
    Config = ToyQueueEMAConfig

    def __init__(self, cfg: ToyQueueEMAConfig, encoder, info) -> None:
        super().__init__(cfg, encoder, info)
        self.views = crop_flip(info, num_views=2, scale=(0.5, 1.0))
        self.projector = mlp(encoder.embed_dim, 32, 16)
        self.target = EMA(self.projector)
        self.queue = FeatureQueue(cfg.queue_size, 16)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        online, other = batch.views
        mask = random_mask(len(online), self.encoder.cfg.num_patches, self.cfg.mask_ratio, online.device)
        prediction = self.projector(pool(self.encoder(online, mask.ids_keep), "cls"))
        with torch.no_grad():
            key = self.target(pool(self.encoder(other), "cls"))
        neighbour, _ = self.queue.nearest(key, batch.ids, self.cfg.topk)
        loss = nnclr(prediction, neighbour, 0.2)
        self.queue.enqueue(key, batch.ids, batch.labels)
        return {"loss": loss}

    def momentum_pairs(self) -> list[tuple[EMA, nn.Module]]:
        return [(self.target, self.projector)]  # --init-from restarts the copy (tests/methods/test_contract.py)

    def after_step(self, progress: float) -> None:
        self.target.update(self.projector, self.cfg.momentum)
