"""MIM-Refiner (Alkin et al. 2024; docs/methods.md 10): a finished masked-image-modelling encoder refined
with instance-discrimination (ID) heads on its upper blocks, trained by Nearest Neighbour Alignment.

Read top to bottom: the settings, the views, one ID head and its loss, stage 2 (`mim-refiner-head`),
stage 3 (`mim-refiner-tune`), then the recipe `mim-refiner` that chains MAE -> stage 2 -> stage 3.

Why: a MIM encoder keeps its most semantic features in late-intermediate blocks, and its last blocks
specialise in pixel reconstruction. MIM-Refiner puts one ID head on the final output (after the final
norm) and one on each tapped upper block (the block's raw output: residual stream, no norm), each with
its own projector, predictor and nearest-neighbour queue; the head losses are summed with weight 1.
Stage 2 trains the heads on the frozen encoder (top-1 neighbour); stage 3 trains everything, with
layer-wise lr decay 0.65 on the encoder and a neighbour drawn among the top-20.

The loss per head (NNA) is NNCLR's cross-entropy with only the positive swapped: for the ordered view
pair (a, b), row i has the positive <nn(z_a,i), p_b,i> / tau and the negatives <z_a,i, p_b,k> / tau
(k != i, the global batch), z the detached projection, nn its queue neighbour (looked up before this
step's enqueue, own sample ids excluded), p the prediction (the only path of the gradient), all unit
vectors; averaged over both pairs. Then view 1's projections are enqueued. Each projector and
predictor runs once over both views, so BatchNorm statistics span both (the official heads run on all
views at once). Stage 3 keeps an EMA of the encoder (nn/encoder_ema.py) for evaluation only: it never
enters the loss and is stored in the checkpoint as `encoder_ema`.

Views: the paper's two global views (BYOL colours on crops of 0.25-1); its ten 96 px local views are
left out (module `refiner_views`). Small scale [S]: heads at most 8 x D wide, queues of min(65536, N/4)
entries, the top-20 scaled to the queue as MAE-CT does (5 on Fashion-MNIST), the EMA's momentum sized
to the run's steps unless `ema_momentum` is given (the paper's 0.9999 in its configs).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, field_validator
from torch import Tensor, nn

from hybridssl.data.sources import DataInfo
from hybridssl.data.views import Crop, Views, colour_pipeline
from hybridssl.losses import fp32
from hybridssl.methods.base import Batch, Method, MethodConfig, Recipe, Stage, register
from hybridssl.methods.mae import MAE
from hybridssl.methods.mae_ct import StagedRecipeConfig, scaled_topk, stage_epochs
from hybridssl.methods.nnclr import queue_length
from hybridssl.nn.block_taps import block_outputs
from hybridssl.nn.distributed import gather_with_grad, rank
from hybridssl.nn.encoder_ema import PAPER_HALF_LIFE, EncoderEMA
from hybridssl.nn.heads import head_width
from hybridssl.nn.momentum import EMA
from hybridssl.nn.param_groups import layer_decay, param_groups
from hybridssl.nn.queue import FeatureQueue
from hybridssl.nn.vit import Pooling, ViT, pool
from hybridssl.settings import ConfigError

PAPER_QUEUE_SIZE = 65536
PAPER_TOPK = 20  # stage 3; stage 2 takes the nearest
FINAL = "final"  # the head on the encoder's output


class RefinerHeadConfig(MethodConfig):
    blocks: list[NonNegativeInt] | None = None  # tapped blocks, 0-based; None: the upper third but the last
    pooling: Pooling = "cls"  # of every head (the paper's CrossMAE models: mean_patch)
    temperature: PositiveFloat = 0.2
    queue_size: PositiveInt | None = None  # per head; None: min(65536, training images / 4)
    topk: PositiveInt = 1
    exclude_self: bool = True
    proj_hidden_dim: PositiveInt | None = None  # None: 2048, at most 8 x D
    proj_dim: PositiveInt = 256
    pred_hidden_dim: PositiveInt | None = None  # None: 4096, at most 8 x D

    @field_validator("blocks")
    @classmethod
    def _distinct(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("each block can be tapped once")
        return value


class RefinerTuneConfig(RefinerHeadConfig):
    topk: PositiveInt | None = None  # None: the paper's 20 scaled to the queue
    frozen_blocks: NonNegativeInt = 0  # the paper's L and H models freeze none (its 2B model: 6)
    layer_decay: float = Field(0.65, gt=0, le=1)
    head_lr_scale: PositiveFloat = 1.0  # head lr / encoder lr (both 4e-4 in the paper)
    head_weight_decay: float = Field(1e-5, ge=0)
    ema_momentum: float | None = Field(None, ge=0, le=1)  # None: sized to the run by ema_half_life
    ema_half_life: float = Field(PAPER_HALF_LIFE, gt=0, le=1)  # fraction of the run


REFINER_OPTIM: dict[str, Any] = {"betas": (0.9, 0.95), "min_lr_fraction": 1e-6}  # cosine to 1e-6 (of the peak [U])


def default_taps(depth: int) -> list[int]:
    """The upper third of the blocks but the last, whose output the final head reads after the norm:
    16-22 of ViT-L's 24 blocks (the paper's), 8-10 of ViT-B's 12, block 4 of vit-pico's 6."""
    return list(range(depth - depth // 3, depth - 1))


def tapped_blocks(blocks: list[int] | None, depth: int) -> list[int]:
    """The blocks given (sorted), or the default ones; an error naming the setting for one the encoder lacks."""
    taps = default_taps(depth) if blocks is None else sorted(blocks)
    if any(b >= depth for b in taps):
        raise ConfigError(f"method_args.blocks: {taps} names a block beyond the encoder's {depth} (0-based)")
    return taps


def refiner_views(info: DataInfo) -> Views:
    """The paper's two global views: crop 0.25-1 (bicubic) and flip, jitter (0.4, 0.4, 0.2, 0.1) p 0.8,
    greyscale p 0.2; blur always on view 1, p 0.1 and solarize p 0.2 on view 2 (adapted to the data as
    `colour_pipeline` does). Its ten local views (96 px, crop 0.05-0.25) are left out: they need
    another input size, and at 28 px they would be 12 px crops."""
    crop = Crop(info.image_size, (0.25, 1.0))

    def colour(blur_p: float, solarize_p: float) -> nn.Module:
        return nn.Sequential(*colour_pipeline(info, (0.4, 0.4, 0.2, 0.1), 0.8, 0.2, blur_p, solarize_p))

    return Views([crop, crop], info, [colour(1.0, 0.0), colour(0.1, 0.2)])


def gelu_mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> nn.Sequential:
    """Linear (no bias) -> BatchNorm -> GELU per hidden layer, then Linear (no bias) -> BatchNorm: the
    official NNCLR head's projector (3 layers) and predictor (2), both ending in an affine BatchNorm,
    Linear weights xavier-uniform as the official heads initialize them."""
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.GELU()]
        dim = hidden_dim
    mlp = nn.Sequential(*layers, nn.Linear(dim, out_dim, bias=False), nn.BatchNorm1d(out_dim))
    for layer in mlp:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
    return mlp


def nn_alignment(projection: Tensor, neighbour: Tensor, prediction: Tensor, temperature: float) -> Tensor:
    """One ordered view pair (a, b) of the NNA loss: cross-entropy whose row i has the positive
    <nn(z_a,i), p_b,i> / tau and the negatives <z_a,i, p_b,k> / tau for the other images k of the global
    batch: only the positive is swapped (NNCLR swaps every row). z_a and its neighbours carry no
    gradient; the predictions are gathered from every rank with theirs."""
    with fp32(prediction):
        p = gather_with_grad(F.normalize(prediction.float(), dim=1))
        z = F.normalize(projection.detach().float(), dim=1)
        n = F.normalize(neighbour.detach().float(), dim=1)
        own = torch.arange(len(z), device=z.device) + rank() * len(z)
        negatives = z @ p.T
        positive = (n * p[own]).sum(dim=1, keepdim=True)
        logits = negatives.scatter(1, own.unsqueeze(1), positive) / temperature
        return F.cross_entropy(logits, own)


class IDHead(nn.Module):
    """One ID head: projector z = g(h), predictor p = q(z) and the queue of its past projections."""

    def __init__(self, dim: int, proj_hidden: int, proj_dim: int, pred_hidden: int, queue_size: int) -> None:
        super().__init__()
        self.projector = gelu_mlp(dim, proj_hidden, proj_dim, num_layers=3)
        self.predictor = gelu_mlp(proj_dim, pred_hidden, proj_dim, num_layers=2)
        self.queue = FeatureQueue(queue_size, proj_dim)

    def forward(self, features: Tensor, batch: Batch, temperature: float, topk: int, exclude_self: bool) -> tuple[Tensor, Tensor]:
        """(the symmetric NNA loss, the queue index of view 1's neighbours) for the pooled features of
        both views (2B x D, view 1 first); then view 1's projections are enqueued."""
        z = self.projector(features)
        p1, p2 = self.predictor(z).chunk(2)
        z1, z2 = z.detach().chunk(2)
        exclude = batch.ids if exclude_self else None
        (n1, index1), (n2, _) = (self.queue.nearest(q, exclude, topk) for q in (z1, z2))
        loss = (nn_alignment(z1, n1, p2, temperature) + nn_alignment(z2, n2, p1, temperature)) / 2
        self.queue.enqueue(z1, batch.ids, batch.labels)
        return loss, index1


class RefinerHeads(Method):
    """What stages 2 and 3 share: the two views, the taps and one ID head per tap plus the final one."""

    eval_pooling = "cls"
    broadcast_buffers = False  # queues are written from gathered batches, the EMA from synced weights

    def __init__(self, cfg: RefinerHeadConfig, encoder: ViT, info: DataInfo) -> None:
        super().__init__(cfg, encoder, info)
        self.views = refiner_views(info)
        self.taps = tapped_blocks(cfg.blocks, encoder.cfg.depth)
        proj_hidden = cfg.proj_hidden_dim or head_width(2048, encoder.embed_dim)
        pred_hidden = cfg.pred_hidden_dim or head_width(4096, encoder.embed_dim)
        size = queue_length(cfg.queue_size, info.num_images, PAPER_QUEUE_SIZE)
        names = [FINAL, *(f"block{b}" for b in self.taps)]
        self.heads = nn.ModuleDict({n: IDHead(encoder.embed_dim, proj_hidden, cfg.proj_dim, pred_hidden, size) for n in names})
        self.topk = cfg.topk
        self.resolved = {"blocks": self.taps, "queue_size": size, "proj_hidden_dim": proj_hidden, "pred_hidden_dim": pred_hidden}

    def features(self, batch: Batch) -> dict[str, Tensor]:
        """Each head's pooled input for both views: the final output (after the norm), and each tapped
        block's raw output."""
        with block_outputs(self.encoder.blocks, self.taps) as tapped:
            final = self.encoder(torch.cat(batch.views))
        pooling = self.cfg.pooling
        return {FINAL: pool(final, pooling), **{f"block{b}": pool(tapped[b], pooling) for b in self.taps}}

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """The sum of the head losses ("loss"), each head's ("loss_<head>") and the final head's `nn_acc`."""
        features = self.features(batch)
        losses: dict[str, Tensor] = {}
        for name, head in self.heads.items():
            losses[f"loss_{name}"], index = head(features[name], batch, self.cfg.temperature, self.topk, self.cfg.exclude_self)
            if name == FINAL and (batch.labels >= 0).any():
                losses["nn_acc"] = head.queue.nn_accuracy(index, batch.labels)
        losses["loss"] = torch.stack([losses[f"loss_{name}"] for name in self.heads]).sum()
        return losses


@register
class MIMRefinerHead(RefinerHeads):
    """Stage 2: the ID heads trained on the frozen encoder (final norm included), nearest neighbour top-1."""

    name = "mim-refiner-head"
    Config = RefinerHeadConfig
    run_defaults = {"optim": {**REFINER_OPTIM, "base_lr": 2e-4, "weight_decay": 1e-5, "warmup_fraction": 0.2}}  # 4 of 20 epochs

    def __init__(self, cfg: RefinerHeadConfig, encoder: ViT, info: DataInfo) -> None:
        super().__init__(cfg, encoder, info)
        encoder.freeze_lower(encoder.cfg.depth)  # the whole encoder, in eval mode
        encoder.norm.requires_grad_(False)


@register
class MIMRefinerTune(RefinerHeads):
    """Stage 3: encoder and heads trained together (layer-wise lr decay on the encoder, optionally lower
    blocks frozen), the neighbour drawn among the top-k, and an EMA of the encoder for evaluation."""

    name = "mim-refiner-tune"
    Config = RefinerTuneConfig
    run_defaults = {"optim": {**REFINER_OPTIM, "base_lr": 4e-4, "weight_decay": 0.05, "warmup_fraction": 4 / 30}}  # 4 of 30 epochs

    def __init__(self, cfg: RefinerTuneConfig, encoder: ViT, info: DataInfo) -> None:
        super().__init__(cfg, encoder, info)
        depth = encoder.cfg.depth
        if cfg.frozen_blocks > depth:
            raise ConfigError(f"method_args.frozen_blocks: {cfg.frozen_blocks} exceeds the encoder's {depth} blocks")
        encoder.freeze_lower(cfg.frozen_blocks)
        self.topk = cfg.topk or scaled_topk(PAPER_TOPK, self.heads[FINAL].queue.size, PAPER_QUEUE_SIZE)
        self.encoder_ema = EncoderEMA(encoder, cfg.ema_momentum, cfg.ema_half_life)  # restarted after init_from
        self.resolved.update(topk=self.topk)

    def momentum_pairs(self) -> list[tuple[EMA, nn.Module]]:
        return [(self.encoder_ema, self.encoder)]

    def after_step(self, progress: float) -> None:
        self.encoder_ema.step(self.encoder, progress)

    def after_init_from(self, loaded: set[str]) -> None:
        """The EMA starts as a copy of the loaded encoder, whatever the checkpoint held."""
        super().after_init_from(loaded)
        self.encoder_ema.restart(self.encoder)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Encoder groups with layer-wise lr decay (the official exponents, as MAE-CT's: nn/param_groups);
        the heads' with their own lr scale and weight decay (1e-5). The EMA is not trained."""
        named = [(n, p) for n, p in self.named_parameters() if not n.startswith("encoder_ema.")]
        encoder = [(n, p) for n, p in named if n.startswith("encoder.")]
        heads = [(n, p) for n, p in named if not n.startswith("encoder.")]
        scale = layer_decay(self.encoder.cfg.depth, self.cfg.layer_decay)
        head_scale = self.cfg.head_lr_scale
        return param_groups(encoder, weight_decay, scale) + param_groups(heads, self.cfg.head_weight_decay, lambda _: head_scale)


PAPER_MAE_EPOCHS = 1600  # the released MAE ViT-L/16 the paper refines


class MIMRefinerConfig(RefinerTuneConfig, StagedRecipeConfig):
    """The recipe's settings: stage 3's, plus the MAE stage's, the stage epochs and optimizer overrides."""


@register
class MIMRefiner(Recipe):
    """stage1-mae (`mae`, skipped with --init-from) -> stage2-head -> stage3-tune, chained by checkpoint.
    Stage epochs scale as the paper's 20 + 30 per 1600 MAE epochs, at least 5 + 10 (never more than the
    MAE epochs); `method_args` holds the stage-3 settings, which stage 2 shares (but top-1)."""

    name = "mim-refiner"
    Config = MIMRefinerConfig
    run_defaults = MAE.run_defaults  # stage 1's optimizer

    @classmethod
    def stages(cls, run_config) -> list[Stage]:
        cfg = cls.Config.model_validate(run_config.method_args)
        head = cfg.model_dump(mode="json", include=set(RefinerHeadConfig.model_fields))
        head.update(topk=1)
        tune = cfg.model_dump(mode="json", include=set(RefinerTuneConfig.model_fields))
        head_epochs = cfg.head_epochs or stage_epochs(run_config.epochs, 20, 5, PAPER_MAE_EPOCHS)
        tune_epochs = cfg.tune_epochs or stage_epochs(run_config.epochs, 30, 10, PAPER_MAE_EPOCHS)
        mae = [] if run_config.init_from else [Stage("stage1-mae", "mae", cfg.mae.model_dump(mode="json"), run_config.epochs)]
        return mae + [
            Stage("stage2-head", "mim-refiner-head", head, head_epochs, cfg.head_optim),
            Stage("stage3-tune", "mim-refiner-tune", tune, tune_epochs, cfg.tune_optim),
        ]
