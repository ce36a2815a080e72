"""`mae-ct` and `mae-ct-aug`: MAE-CT's three stages as one command (docs/methods.md 2b).

stage1-mae (`mae`) -> stage2-head (`mae-ct-head`) -> stage3-tune (`mae-ct-tune`): each a run of its
own (config.yaml, logs, checkpoints) in a sub-folder of the output, each starting from the previous
stage's final checkpoint. With `--init-from CKPT` stage 1 is skipped and stage 2 starts from CKPT: an
MAE checkpoint, the encoder of any other hybridssl method (contrastive tuning on top of it), or a
released MAE encoder as in the paper (official, timm or mmpretrain files: engine/foreign.py).

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

from pydantic import Field, PositiveFloat, PositiveInt, ValidationError, field_validator

from hybridssl.settings import OptimConfig, format_validation_error
from hybridssl.methods.base import Recipe, Stage, register
from hybridssl.methods.mae import MAE, MAEConfig
from hybridssl.methods.mae_ct import MAECTHeadConfig, MAECTTuneConfig

PAPER_MAE_EPOCHS = 800


class MAECTConfig(MAECTTuneConfig):
    mae: MAEConfig = Field(default_factory=MAEConfig)
    head_temperature: PositiveFloat = 0.15
    head_epochs: PositiveInt | None = None
    tune_epochs: PositiveInt | None = None
    head_optim: dict[str, Any] = Field(default_factory=dict)  # over mae-ct-head's optimizer defaults
    tune_optim: dict[str, Any] = Field(default_factory=dict)  # over mae-ct-tune's optimizer defaults

    @field_validator("head_optim", "tune_optim")
    @classmethod
    def _valid_optim(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            OptimConfig.model_validate(value)
        except ValidationError as exc:
            raise ValueError(format_validation_error(exc)) from None
        return value


def stage_epochs(mae_epochs: int | None, paper_epochs: int, minimum: int) -> int | None:
    """The paper's share of the MAE epochs, at least `minimum` (but never more than the MAE epochs)."""
    if mae_epochs is None:
        return None
    return max(min(minimum, mae_epochs), math.ceil(mae_epochs * paper_epochs / PAPER_MAE_EPOCHS))


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
