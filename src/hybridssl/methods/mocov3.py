"""MoCo v3 (Chen, Xie, He 2021; docs/methods.md 6.2), the ViT recipe of the official code.

Online branch: encoder -> CLS token -> projector (3 layers, 4096 hidden, 256 out, BatchNorm after every
layer, the last one without affine) -> predictor (2 layers, last BatchNorm without affine) = q.
Momentum branch: EMA copies of encoder and projector (no predictor) give the keys k, without
gradient; the momentum rises from 0.99 to 1 by a half-cosine over training. Loss
c(q1, k2) + c(q2, k1) with c = 2 tau x cross-entropy over the keys of the global batch (in-batch
negatives, no queue); the 2 tau factor keeps the gradient scale independent of tau.
The patch embedding stays at its random init (stop-gradient): the paper reports this removes the
periodic accuracy dips of ViT training. As the official code: the CLS token starts at N(0, 1e-6)
and qkv weights are xavier-uniform with the fan of one of Q, K, V; heads keep PyTorch's default init.
The official code updates the momentum branch before computing each step's keys; we update after
each optimizer step (engine `after_step`), which yields the same sequence of weights.
Optimizer (paper): AdamW, base lr 1.5e-4 per 256 images, wd 0.1, warmup 40 of 300 epochs.
Small scale [S]: the heads are at most 8 x D wide (1024 for vit-pico, `nn.heads.head_width`); the views
are `data.views.byol_asymmetric`, adapted to small/greyscale images as that module says.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field, PositiveFloat, PositiveInt
from torch import Tensor, nn

from hybridssl.data.views import byol_asymmetric
from hybridssl.losses import info_nce
from hybridssl.methods.base import MOCOV3_VIT_OPTIM, Batch, Method, MethodConfig, register
from hybridssl.nn.heads import head_width, mlp
from hybridssl.nn.momentum import EMA, momentum_at
from hybridssl.nn.vit import Pooling, ViT, pool


class MoCoV3Config(MethodConfig):
    temperature: PositiveFloat = 0.2
    momentum: float = Field(0.99, ge=0, le=1)  # at the start; rises to `momentum_end` by a half-cosine
    momentum_end: float = Field(1.0, ge=0, le=1)
    hidden_dim: PositiveInt | None = None  # projector and predictor; None: 4096, at most 8 x D
    out_dim: PositiveInt = 256
    pooling: Pooling = "cls"
    freeze_patch_embed: bool = True


def init_like_mocov3(encoder: ViT) -> None:
    """qkv: uniform with bound sqrt(6 / (D + D)), the fan of one of Q, K, V; CLS token: N(0, 1e-6)."""
    for name, module in encoder.named_modules():
        if isinstance(module, nn.Linear) and name.endswith("attn.qkv"):
            bound = math.sqrt(6.0 / (module.weight.shape[0] // 3 + module.weight.shape[1]))
            nn.init.uniform_(module.weight, -bound, bound)
    nn.init.normal_(encoder.cls_token, std=1e-6)


@register
class MoCoV3(Method):
    name = "mocov3"
    Config = MoCoV3Config
    run_defaults = {"optim": {**MOCOV3_VIT_OPTIM, "warmup_fraction": 40 / 300}}

    def __init__(self, cfg: MoCoV3Config, encoder: ViT, info) -> None:
        super().__init__(cfg, encoder, info)
        self.views = byol_asymmetric(info)
        init_like_mocov3(encoder)
        if cfg.freeze_patch_embed:
            encoder.patch_embed.requires_grad_(False)
        hidden = cfg.hidden_dim or head_width(4096, encoder.embed_dim)
        self.projector = mlp(encoder.embed_dim, hidden, cfg.out_dim, num_layers=3, last_norm="nonaffine")
        self.predictor = mlp(cfg.out_dim, hidden, cfg.out_dim, num_layers=2, last_norm="nonaffine")
        self.resolved = {"hidden_dim": hidden}
        # MoCo v3 averages parameters only; the momentum BatchNorms keep their own running statistics
        self.momentum_encoder = EMA(encoder, copy_buffers=False)
        self.momentum_projector = EMA(self.projector, copy_buffers=False)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        images, t = torch.cat(batch.views), self.cfg.temperature
        # the ViT has no BatchNorm, so one pass over both views; the heads run per view (per-view BN)
        online = pool(self.encoder(images), self.cfg.pooling).chunk(2)
        q1, q2 = (self.predictor(self.projector(h)) for h in online)
        with torch.no_grad():
            momentum = pool(self.momentum_encoder(images), self.cfg.pooling).chunk(2)
            k1, k2 = (self.momentum_projector(h) for h in momentum)
        return {"loss": info_nce(q1, k2, t, scale=2 * t) + info_nce(q2, k1, t, scale=2 * t)}

    def momentum_pairs(self) -> list[tuple[EMA, nn.Module]]:
        return [(self.momentum_encoder, self.encoder), (self.momentum_projector, self.projector)]

    def after_step(self, progress: float) -> None:
        m = momentum_at(progress, self.cfg.momentum, self.cfg.momentum_end, "cosine")
        self.update_momentum(m)
