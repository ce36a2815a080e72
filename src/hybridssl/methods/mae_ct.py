"""MAE-CT (Lehner et al. 2023; docs/methods.md 2): contrastive tuning of a finished MAE with an NNCLR head.

Stage 1 is MAE. Stage 2, `mae-ct-head`, trains only an NNCLR head (methods/nnclr.py) on the frozen
encoder: two crop+flip views (crop 0.08-1; 0.2-1 below 32 px, docs/methods.md 8), no masking, mean-patch pooling, tau 0.15, the nearest
neighbour of the online projection. Stage 3, `mae-ct-tune`, unfreezes the upper half of the blocks
and the final norm (patch embedding, CLS token and lower blocks stay frozen and in eval mode), uses
layer-wise lr decay with the exponents MAE-CT codes (nn/param_groups.layer_decay: block b gets
0.65^(L-b), so even the top block is discounted), and an EMA "target" projector (m 0.99, BatchNorm
buffers copied, started as a copy of the stage-2 projector) whose output is the lookup key and what is
enqueued; the neighbour is drawn uniformly among the top-k. The head's optimizer groups get their own
lr (x `head_lr_scale`) and weight decay (1e-5), as MAE-CT's separate head optimizer. lr scaling counts
both views (base x batch x 2 / 256); warmup is 20% of each stage.
Defaults are the ViT-B yamls (docs/methods.md 2d). ViT-L/H: `pooling: cls`; tau 0.2 / 0.3 and target
momentum 0.995 for H. `augment: byol` is MAE-CT_aug (stage 3: top-k 10, head lr x5).
Small scale [S]: heads at most 8 x D wide (1024 for vit-pico); the queue holds min(65536, N/4) of N
training images (docs/methods.md 8: 8-16k for 50-60k images); without a `topk`, stage 3 draws among the
paper's k (20, or 10 with `augment: byol`) scaled by queue/65536, at least min(5, paper k).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PositiveFloat, PositiveInt
from torch import Tensor, nn

from hybridssl.settings import ConfigError
from hybridssl.data.views import byol_asymmetric, crop_flip, min_crop_scale
from hybridssl.nn.param_groups import layer_decay, param_groups
from hybridssl.methods.base import register
from hybridssl.methods.nnclr import NNCLR, NNCLRConfig
from hybridssl.nn.momentum import EMA
from hybridssl.nn.vit import Pooling, ViT


class MAECTHeadConfig(NNCLRConfig):
    temperature: PositiveFloat = 0.15
    pooling: Pooling = "mean_patch"  # ViT-B and smaller; MAE-CT uses CLS for ViT-L/H
    augment: Literal["minimal", "byol"] = "minimal"  # crop+flip (MAE-CT) or BYOL colours (MAE-CT_aug)


class MAECTTuneConfig(MAECTHeadConfig):
    topk: PositiveInt | None = None  # None: the paper's k scaled to the queue (module docstring)
    frozen_blocks: int | None = Field(None, ge=0)  # None: the lower half
    layer_decay: float = Field(0.65, gt=0, le=1)
    target_momentum: float = Field(0.99, ge=0, le=1)
    head_lr_scale: PositiveFloat = 1.0  # head lr / encoder lr (5 for MAE-CT_aug)
    head_weight_decay: float = Field(1e-5, ge=0)


def mae_ct_views(cfg: MAECTHeadConfig, info):
    if cfg.augment == "byol":
        return byol_asymmetric(info)
    return crop_flip(info, num_views=2, scale=(min_crop_scale(info), 1.0))


MAE_CT_OPTIM = {"base_lr": 1e-4, "betas": (0.9, 0.95), "warmup_fraction": 0.2}


class MAECTStage(NNCLR):
    """What stages 2 and 3 share: NNCLR on two crop+flip (or BYOL) views, mean-patch features, the
    paper's queue size for scaling top-k, and lr scaled by both views."""

    lr_views = 2
    eval_pooling = "mean_patch"
    paper_queue_size = 65536

    def __init__(self, cfg: MAECTHeadConfig, encoder: ViT, info) -> None:
        super().__init__(cfg, encoder, info)
        self.views = mae_ct_views(cfg, info)


@register
class MAECTHead(MAECTStage):
    name = "mae-ct-head"
    Config = MAECTHeadConfig
    run_defaults = {"optim": {**MAE_CT_OPTIM, "weight_decay": 1e-5}}

    def __init__(self, cfg: MAECTHeadConfig, encoder: ViT, info) -> None:
        super().__init__(cfg, encoder, info)
        encoder.freeze_lower(encoder.cfg.depth)  # the whole encoder, in eval mode
        encoder.norm.requires_grad_(False)


@register
class MAECTTune(MAECTStage):
    name = "mae-ct-tune"
    Config = MAECTTuneConfig
    run_defaults = {"optim": {**MAE_CT_OPTIM, "weight_decay": 0.05}}

    def __init__(self, cfg: MAECTTuneConfig, encoder: ViT, info) -> None:
        super().__init__(cfg, encoder, info)
        depth = encoder.cfg.depth
        frozen = depth // 2 if cfg.frozen_blocks is None else cfg.frozen_blocks
        if frozen > depth:
            raise ConfigError(f"method_args.frozen_blocks: {frozen} exceeds the encoder's {depth} blocks")
        encoder.freeze_lower(frozen)
        self.target_projector = EMA(self.projector, copy_buffers=True)
        paper_k = 10 if cfg.augment == "byol" else 20
        scaled = round(paper_k * self.queue.size / self.paper_queue_size)
        self.topk = cfg.topk or min(paper_k, max(min(5, paper_k), scaled))
        self.resolved.update(topk=self.topk, frozen_blocks=frozen)

    def lookup_keys(self, features: tuple[Tensor, ...], projections: list[Tensor]) -> list[Tensor]:
        with torch.no_grad():
            return [self.target_projector(h) for h in features]

    def momentum_pairs(self) -> list[tuple[EMA, nn.Module]]:
        return [(self.target_projector, self.projector)]  # from stage 2: starts as a copy of its projector

    def after_step(self, progress: float) -> None:
        self.update_momentum(self.cfg.target_momentum)

    def param_groups(self, weight_decay: float) -> list[dict]:
        named = list(self.named_parameters())
        encoder = [(n, p) for n, p in named if n.startswith("encoder.")]
        head = [(n, p) for n, p in named if not n.startswith("encoder.")]
        scale = layer_decay(self.encoder.cfg.depth, self.cfg.layer_decay)
        head_scale = self.cfg.head_lr_scale
        head_groups = param_groups(head, self.cfg.head_weight_decay, lambda _: head_scale)
        return param_groups(encoder, weight_decay, scale) + head_groups
