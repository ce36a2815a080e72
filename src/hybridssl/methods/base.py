"""The Method contract: what every pretraining method exposes to the engine, and the registry.

A method is an nn.Module built from shared parts. The engine calls `views(images)`, then
`forward(batch)` -> named losses with the total under "loss", then `after_step(progress)` after each
optimizer step. State that must survive a resume (queues, pointers, EMA copies) lives in parameters
and buffers, so the plain state dict carries it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from hybridssl.config import StrictModel
from hybridssl.data.sources import DataInfo
from hybridssl.data.views import Views
from hybridssl.nn.vit import ViT


@dataclass
class Batch:
    views: list[Tensor]  # normalized float views, each B x C x H x W
    ids: Tensor  # dataset index of each sample (B)
    labels: Tensor  # -1 where unknown; for monitoring only, never in a loss


class MethodConfig(StrictModel):
    """Base class of each method's own settings (`method_args` in the run config)."""


class Method(nn.Module):
    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    run_defaults: ClassVar[dict[str, Any]] = {}  # e.g. optimizer defaults from the paper
    lr_views: ClassVar[int] = 1  # views counted in the effective batch that scales the lr
    eval_pooling: ClassVar[str] = "cls"  # the pooling evaluation uses unless told otherwise
    find_unused_parameters: ClassVar[bool] = False  # DDP: some trainable parameter gets no gradient

    views: Views

    def __init__(self, cfg: MethodConfig, encoder: ViT, info: DataInfo) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.info = info

    def forward(self, batch: Batch) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer groups of the trainable parameters; frozen ones are left out."""
        from hybridssl.engine.optim import param_groups

        return param_groups(self.named_parameters(), weight_decay)

    def after_step(self, progress: float) -> None:
        """Once per optimizer step; `progress` in (0, 1] is the fraction of training done."""


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def build_method(run, info: DataInfo) -> Method:
    """The method named by the run config, around a fresh encoder sized for the data."""
    from hybridssl.config import ConfigError
    from hybridssl.nn.vit import vit_config

    try:
        encoder = ViT(vit_config(run.model, info.image_size, info.channels, run.patch_size, drop_path=run.drop_path))
    except ValueError as exc:
        raise ConfigError(f"patch_size: {exc}") from None
    cls = METHODS[run.method]
    return cls(cls.Config.model_validate(run.method_args), encoder, info)
