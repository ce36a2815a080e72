"""The Method contract: what every pretraining method exposes to the engine, and the registry.

A method is an nn.Module built from shared parts. The engine calls `views(images)`, then
`forward(batch)` -> named losses with the total under "loss", then `after_step(progress)` after each
optimizer step. State that must survive a resume (queues, pointers, EMA copies) lives in parameters
and buffers, so the plain state dict carries it.

Every method is a list of stages (`stages(run)`): a plain Method is one stage in the run's own folder;
a `Recipe` is a method made of several runs chained by checkpoint (MAE-CT: MAE -> head -> tuning);
it declares its stages and the engine runs them, each a normal run of a registered Method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Union

from torch import Tensor, nn

from hybridssl.settings import ConfigError, StrictModel
from hybridssl.data.sources import DataInfo
from hybridssl.data.views import Views
from hybridssl.methods import own_loop
from hybridssl.nn.masking import Mask
from hybridssl.nn.momentum import EMA
from hybridssl.nn.param_groups import param_groups
from hybridssl.nn.vit import Pooling, ViT, set_grad_checkpointing, vit_config


@dataclass
class Batch:
    """What `forward` receives: the method's views of a batch (already augmented and normalized)."""

    views: list[Tensor]  # normalized float views, each B x C x H x W
    ids: Tensor  # dataset index of each sample (B)
    labels: Tensor  # -1 where unknown; for monitoring only, never in a loss


# The MAE paper's optimizer (AdamW, betas 0.9/0.95, weight decay 0.05, base lr 1.5e-4 per 256), which
# the masked hybrids follow as well.
MAE_OPTIM: dict[str, Any] = {"base_lr": 1.5e-4, "weight_decay": 0.05, "betas": (0.9, 0.95), "warmup_fraction": 0.05}
# MoCo v3's ViT recipe (AdamW, wd 0.1, base lr 1.5e-4 per 256), which the contrastive baselines share.
MOCOV3_VIT_OPTIM: dict[str, Any] = {"base_lr": 1.5e-4, "weight_decay": 0.1, "betas": (0.9, 0.999), "warmup_fraction": 0.1}


@dataclass(frozen=True)
class Stage:
    """One run of a recipe: a registered Method with its own settings, in its own sub-folder."""

    folder: str  # under the recipe's output, sorting in stage order ("stage1-mae", ...); "" = the output itself
    method: str
    method_args: dict[str, Any]
    epochs: int | None
    # None: the recipe run's own optimizer settings; a dict: over the stage method's defaults
    optim: dict[str, Any] | None = None


class MethodConfig(StrictModel):
    """Base class of each method's own settings (`method_args` in the run config)."""


class Method(nn.Module):
    """A pretraining method: parts built in `__init__`, named losses (and their sum, "loss") from
    `forward(batch)`, per-step updates in `after_step`. Subclass it with a `name`, a `Config` and
    `@register` to make `--method NAME` train it (docs/adding-a-method.md, examples/custom_method.py)."""

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    run_defaults: ClassVar[dict[str, Any]] = {}  # e.g. optimizer defaults from the paper
    lr_views: ClassVar[int] = 1  # views counted in the effective batch that scales the lr
    find_unused_parameters: ClassVar[bool] = False  # DDP: some trainable parameter gets no gradient
    # DDP re-broadcasts rank 0's buffers before every forward; a method whose buffers are identical on
    # every rank by construction (queues written from gathered batches) can skip that copy.
    broadcast_buffers: ClassVar[bool] = True
    eval_pooling: ClassVar[Pooling] = "cls"  # a `pooling` field in the method's Config overrides it
    # optimizer steps (global batch 256) below which the method's frozen features were measured no better
    # than the same ViT at random init (BENCHMARKS.md): `pretrain` says so before a shorter run; None: not measured
    steps_to_beat_random_init: ClassVar[int | None] = None

    views: Views

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass's own `after_step` is wrapped to tell the own-loop guard it ran (methods/own_loop.py)."""
        super().__init_subclass__(**kwargs)
        if "after_step" in cls.__dict__:
            cls.after_step = own_loop.noting_after_step(cls.__dict__["after_step"])

    def __init__(self, cfg: MethodConfig, encoder: ViT, info: DataInfo) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.info = info
        self.resolved: dict[str, Any] = {}  # values of `None` ("auto") settings, as derived here
        # a loop of one's own that ignores lr_scale or skips after_step is warned (methods/own_loop.py)
        own_loop.watch(self, own_loop.notes_steps(type(self).after_step))

    @classmethod
    def stages(cls, run_config) -> list[Stage]:
        """A method is a one-stage recipe: one run in the run's own folder."""
        return [Stage("", cls.name, dict(run_config.method_args), run_config.epochs)]

    @property
    def pooling(self) -> Pooling:
        """The pooling the encoder is evaluated with: the `pooling` setting if the method has one, else
        the method's default. Written into every checkpoint, so evaluation needs no method code."""
        return getattr(self.cfg, "pooling", None) or self.eval_pooling

    def forward(self, batch: Batch) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def reconstruct(self, images: Tensor) -> tuple[Tensor, Mask] | None:
        """(predicted patches B x N x P, in norm-pix space when the method uses it, and the Mask) for
        normalized `images`: the report's pictures. None for methods that do not reconstruct pixels."""
        return None

    @property
    def reconstructs(self) -> bool:
        """Whether the method overrides `reconstruct` (the report draws reconstructions for these)."""
        return type(self).reconstruct is not Method.reconstruct

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer groups of the trainable parameters; frozen ones are left out."""
        return param_groups(self.named_parameters(), weight_decay)

    def after_step(self, progress: float) -> None:
        """Once per optimizer step; `progress` in (0, 1] is the fraction of training done."""

    def momentum_pairs(self) -> list[tuple[EMA, nn.Module]]:
        """(EMA copy, the module it follows) for every momentum branch of the method."""
        return []

    def update_momentum(self, momentum: float) -> None:
        """One EMA step of every momentum branch (called from `after_step` with the scheduled value)."""
        for ema, source in self.momentum_pairs():
            ema.update(source, momentum)

    def after_init_from(self, loaded: set[str]) -> None:
        """Called after `--init-from` copied the state-dict entries named in `loaded`: EMA copies the
        checkpoint did not hold restart as copies of their (now loaded) online modules."""
        names = {id(module): name for name, module in self.named_modules()}
        for ema, source in self.momentum_pairs():
            if not any(key.startswith(names[id(ema)] + ".") for key in loaded):
                ema.update(source, 0.0)


class Recipe:
    """A method made of several runs chained by checkpoint; registered beside the Methods."""

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    run_defaults: ClassVar[dict[str, Any]] = {}

    @classmethod
    def stages(cls, run_config) -> list[Stage]:  # pragma: no cover - abstract
        """The stages to run, in order; each starts from the previous one's final checkpoint."""
        raise NotImplementedError


METHODS: dict[str, Union[type[Method], type[Recipe]]] = {}


def register(cls):
    """Class decorator: adds a Method or Recipe to `METHODS` under its `name` (what `--method` looks up)."""
    METHODS[cls.name] = cls
    return cls


def build_method(run_config, info: DataInfo) -> Method:
    """The method named by the run config, around a fresh encoder sized for the data."""

    try:
        encoder = ViT(vit_config(run_config.model, info.image_size, info.channels, run_config.patch_size, drop_path=run_config.drop_path))
    except ValueError as exc:
        raise ConfigError(f"patch_size: {exc}") from None
    cls = METHODS[run_config.method]
    if not issubclass(cls, Method):
        raise ConfigError(f"method: {run_config.method!r} is a multi-stage recipe; run it with `pretrain`")
    method = cls(cls.Config.model_validate(run_config.method_args), encoder, info)
    set_grad_checkpointing(method, run_config.grad_checkpointing)
    return method
