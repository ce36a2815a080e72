"""MAE-CT (Lehner et al. 2023; docs/methods.md 2): contrastive tuning of a finished MAE with an NNCLR head.

Read top to bottom: the settings, stage 2 (`mae-ct-head`), stage 3 (`mae-ct-tune`), then the
registered recipes `mae-ct` and `mae-ct-aug` that chain MAE -> stage 2 -> stage 3.

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
With `encoder_ema: true` stage 3 also keeps the official code's EMA of the encoder (0.9999 there; by
default sized to the run, nn/encoder_ema.py) in its checkpoints, for evaluation only (`ema=True` in
weights.load_trained_encoder); it never enters the loss.
Defaults are the ViT-B yamls (docs/methods.md 2d). ViT-L/H: `pooling: cls`; tau 0.2 / 0.3 and target
momentum 0.995 for H. `augment: byol` is MAE-CT_aug (stage 3: top-k 10, head lr x5).
Small scale [S]: heads at most 8 x D wide (1024 for vit-pico); the queue holds min(65536, N/4) of N
training images (docs/methods.md 8: 8-16k for 50-60k images); without a `topk`, stage 3 draws among the
paper's k (20, or 10 with `augment: byol`) scaled by queue/65536, at least min(5, paper k).

The recipes (docs/methods.md 2b): stage1-mae (`mae`) -> stage2-head (`mae-ct-head`) -> stage3-tune (`mae-ct-tune`): each a run of its
own (config.yaml, logs, checkpoints) in a sub-folder of the output, each starting from the previous
stage's final checkpoint. With `--init-from CKPT` stage 1 is skipped and stage 2 starts from CKPT: an
MAE checkpoint, the encoder of any other hybridssl method (contrastive tuning on top of it), or a
released MAE encoder as in the paper (official, timm or mmpretrain files: weights/released.py).

Budget: `--max-steps` caps every stage. `--epochs` is the MAE (stage 1) budget; stages 2 and 3 run
`head_epochs` / `tune_epochs`, by default scaled as the paper does (20 and 20 -- 80 for MAE-CT_aug --
per 800 MAE epochs) but at least 5 and 10 epochs and never more than the MAE epochs: 100 MAE epochs
give 5 + 10, 800 give 20 + 20.
Settings: `method_args` holds the stage-3 settings (architecture, queue, pooling and augmentation are
shared with stage 2), `mae` the stage-1 MAE settings and `head_temperature` stage 2's tau. Stage 1
uses the run's optimizer settings (`--lr` etc.); stages 2 and 3 their methods' defaults updated by
`head_optim` / `tune_optim`, e.g. `--set method_args.tune_optim.base_lr=2e-4`.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, PositiveFloat, PositiveInt, ValidationError, field_validator
from torch import Tensor, nn

from hybridssl.data.views import byol_asymmetric, crop_flip, min_crop_scale
from hybridssl.methods.base import Batch, Method, MethodConfig, Recipe, Stage, register
from hybridssl.methods.mae import MAE, MAEConfig
from hybridssl.methods.nnclr import NNCLRConfig, nnclr_heads, queue_length, swapped_neighbour_loss
from hybridssl.nn.encoder_ema import PAPER_HALF_LIFE, EncoderEMA
from hybridssl.nn.momentum import EMA
from hybridssl.nn.param_groups import layer_decay, param_groups
from hybridssl.nn.queue import FeatureQueue
from hybridssl.nn.vit import Pooling, ViT, pool
from hybridssl.settings import ConfigError, OptimConfig, format_validation_error


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
    # an EMA of the encoder for evaluation only (the official code's 0.9999, nn/encoder_ema.py); never in the loss
    encoder_ema: bool = False
    ema_momentum: float | None = Field(None, ge=0, le=1)  # None: sized to the run by ema_half_life
    ema_half_life: float = Field(PAPER_HALF_LIFE, gt=0, le=1)  # fraction of the run


MAE_CT_OPTIM = {"base_lr": 1e-4, "betas": (0.9, 0.95), "warmup_fraction": 0.2}
PAPER_QUEUE_SIZE = 65536


def mae_ct_views(cfg: MAECTHeadConfig, info):
    """Two crop+flip views (MAE-CT), or BYOL's asymmetric colour views (MAE-CT_aug)."""
    if cfg.augment == "byol":
        return byol_asymmetric(info)
    return crop_flip(info, num_views=2, scale=(min_crop_scale(info), 1.0))


class MAECTHeadBase(Method):
    """The parts stages 2 and 3 share: NNCLR's heads and queue on the encoder's mean-patch features,
    lr scaled by both views."""

    lr_views = 2
    eval_pooling = "mean_patch"
    broadcast_buffers = False  # the queue is written from gathered batches: identical on every rank

    def __init__(self, cfg: MAECTHeadConfig, encoder: ViT, info) -> None:
        super().__init__(cfg, encoder, info)
        self.views = mae_ct_views(cfg, info)
        self.projector, self.predictor, widths = nnclr_heads(encoder.embed_dim, cfg)
        size = queue_length(cfg.queue_size, info.num_images, PAPER_QUEUE_SIZE)
        self.queue = FeatureQueue(size, cfg.proj_dim)
        self.topk = cfg.topk  # stage 3 without one: scaled from the paper's (MAECTTune)
        self.resolved = {**widths, "queue_size": size}

    def features(self, batch: Batch) -> tuple[Tensor, ...]:
        return pool(self.encoder(torch.cat(batch.views)), self.cfg.pooling).chunk(2)


@register
class MAECTHead(MAECTHeadBase):
    """Stage 2: an NNCLR head trained on the frozen encoder; the neighbour is the nearest of the online
    projection."""

    name = "mae-ct-head"
    Config = MAECTHeadConfig
    run_defaults = {"optim": {**MAE_CT_OPTIM, "weight_decay": 1e-5}}

    def __init__(self, cfg: MAECTHeadConfig, encoder: ViT, info) -> None:
        super().__init__(cfg, encoder, info)
        encoder.freeze_lower(encoder.cfg.depth)  # the whole encoder, in eval mode
        encoder.norm.requires_grad_(False)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        features = self.features(batch)
        z = [self.projector(h) for h in features]
        p = [self.predictor(x) for x in z]
        return swapped_neighbour_loss(self.queue, p, z, batch, self.cfg.temperature, self.topk, self.cfg.exclude_self)


@register
class MAECTTune(MAECTHeadBase):
    """Stage 3: the upper blocks unfrozen with layer-wise lr decay; the lookup key (and what is enqueued)
    is an EMA target projector's output, the neighbour drawn among the top-k."""

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
        self.topk = cfg.topk or scaled_topk(10 if cfg.augment == "byol" else 20, self.queue.size)
        # built after freezing, before init_from: a copy of the starting encoder (after_init_from restarts it)
        self.encoder_ema = EncoderEMA(encoder, cfg.ema_momentum, cfg.ema_half_life) if cfg.encoder_ema else None
        self.resolved.update(topk=self.topk, frozen_blocks=frozen)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        features = self.features(batch)
        p = [self.predictor(self.projector(h)) for h in features]
        with torch.no_grad():
            keys = [self.target_projector(h) for h in features]
        return swapped_neighbour_loss(self.queue, p, keys, batch, self.cfg.temperature, self.topk, self.cfg.exclude_self)

    def momentum_pairs(self) -> list[tuple[EMA, nn.Module]]:
        pairs: list[tuple[EMA, nn.Module]] = [(self.target_projector, self.projector)]  # starts as stage 2's projector
        return pairs + ([(self.encoder_ema, self.encoder)] if self.encoder_ema is not None else [])

    def after_step(self, progress: float) -> None:
        self.target_projector.update(self.projector, self.cfg.target_momentum)
        if self.encoder_ema is not None:
            self.encoder_ema.step(self.encoder, progress)

    def after_init_from(self, loaded: set[str]) -> None:
        """As every method; and the encoder EMA, if any, starts over from the loaded encoder."""
        super().after_init_from(loaded)
        if self.encoder_ema is not None:
            self.encoder_ema.restart(self.encoder)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Encoder groups with layer-wise lr decay; the head's with its own lr scale and weight decay (MAE-CT's
        separate head optimizer)."""
        named = list(self.named_parameters())
        encoder = [(n, p) for n, p in named if n.startswith("encoder.")]
        head = [(n, p) for n, p in named if not n.startswith("encoder.")]
        scale = layer_decay(self.encoder.cfg.depth, self.cfg.layer_decay)
        head_scale = self.cfg.head_lr_scale
        head_groups = param_groups(head, self.cfg.head_weight_decay, lambda _: head_scale)
        return param_groups(encoder, weight_decay, scale) + head_groups


PAPER_MAE_EPOCHS = 800


class StagedRecipeConfig(MethodConfig):
    """What a recipe of MAE -> head -> tuning stages adds to its stage-3 settings (MAE-CT, MIM-Refiner):
    the MAE stage's settings, each later stage's epochs, and optimizer overrides of its stages 2 and 3."""

    mae: MAEConfig = Field(default_factory=MAEConfig)
    head_epochs: PositiveInt | None = None
    tune_epochs: PositiveInt | None = None
    head_optim: dict[str, Any] = Field(default_factory=dict)  # over the head stage's optimizer defaults
    tune_optim: dict[str, Any] = Field(default_factory=dict)  # over the tuning stage's optimizer defaults

    @field_validator("head_optim", "tune_optim")
    @classmethod
    def _valid_optim(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            OptimConfig.model_validate(value)
        except ValidationError as exc:
            raise ValueError(format_validation_error(exc)) from None
        return value


class MAECTConfig(MAECTTuneConfig, StagedRecipeConfig):
    head_temperature: PositiveFloat = 0.15


def scaled_topk(paper_k: int, queue_size: int, paper_queue_size: int = PAPER_QUEUE_SIZE) -> int:
    """The paper's top-k scaled by queue / paper queue, at least min(5, paper k) and at most the paper's
    (k = 20 among 65536 entries is about as selective as k = 5 among 15000)."""
    return min(paper_k, max(min(5, paper_k), round(paper_k * queue_size / paper_queue_size)))


def stage_epochs(mae_epochs: int | None, paper_epochs: int, minimum: int, paper_mae_epochs: int = PAPER_MAE_EPOCHS) -> int | None:
    """The paper's share of the MAE epochs, at least `minimum` (but never more than the MAE epochs)."""
    if mae_epochs is None:
        return None
    return max(min(minimum, mae_epochs), math.ceil(mae_epochs * paper_epochs / paper_mae_epochs))


@register
class MAECT(Recipe):
    name = "mae-ct"
    Config = MAECTConfig
    run_defaults = MAE.run_defaults  # stage 1's optimizer
    paper_head_epochs = 20
    paper_tune_epochs = 20

    @classmethod
    def stages(cls, run_config) -> list[Stage]:
        cfg = cls.Config.model_validate(run_config.method_args)
        head = cfg.model_dump(mode="json", include=set(MAECTHeadConfig.model_fields))
        head.update(temperature=cfg.head_temperature, topk=1)
        tune = cfg.model_dump(mode="json", include=set(MAECTTuneConfig.model_fields))
        head_epochs = cfg.head_epochs or stage_epochs(run_config.epochs, cls.paper_head_epochs, 5)
        tune_epochs = cfg.tune_epochs or stage_epochs(run_config.epochs, cls.paper_tune_epochs, 10)
        mae = [] if run_config.init_from else [Stage("stage1-mae", "mae", cfg.mae.model_dump(mode="json"), run_config.epochs)]
        return mae + [
            Stage("stage2-head", "mae-ct-head", head, head_epochs, cfg.head_optim),
            Stage("stage3-tune", "mae-ct-tune", tune, tune_epochs, cfg.tune_optim),
        ]


class MAECTAugConfig(MAECTConfig):
    augment: Literal["minimal", "byol"] = "byol"
    head_lr_scale: PositiveFloat = 5.0  # head base lr 5e-4 in stage 3 (docs/methods.md 2d)


@register
class MAECTAug(MAECT):
    name = "mae-ct-aug"
    Config = MAECTAugConfig
    paper_tune_epochs = 80
