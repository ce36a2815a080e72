"""NNCLR (Dwibedi et al. 2021; docs/methods.md 6.1): the positive of a view is the nearest neighbour of the
other view's embedding in a support queue of past embeddings.

Each view: encoder -> pooled feature -> projector z (3 layers, BatchNorm after every layer, ReLU after
all but the last) -> predictor p (2 layers). The neighbour n of a view is looked up, without gradient,
among the unit-normalized queue entries nearest to that view's lookup key (z here; MAE-CT stage 3
uses an EMA projector); the loss (docs/methods.md 2c) is (l(p1, n2) + l(p2, n1)) / 2, where l is a
cross-entropy whose rows are neighbours and whose columns are the predictions of the global batch.
After the loss, the keys of view 1 of the global batch are enqueued. Projector and predictor run once
per view, so BatchNorm statistics are per view. The share of neighbours with the query's label is
logged as `nn_acc` (monitoring only: labels never reach the loss).

Beyond the paper: the query's own sample id is excluded from the lookup (`exclude_self`, docs/methods.md
6.1f; the paper does not), and the queue holds min(98304, N/4) entries for N training images and may
not exceed N: a queue as large as the dataset holds stale copies of the query image itself.
Optimizer: the paper uses LARS for ResNets; on the ViT we use the MoCo v3 ViT recipe as for SimCLR
(AdamW, base lr 1.5e-4 per 256 images, wd 0.1). Small scale [S]: tau 0.2 (solo-learn's CIFAR
value at batch 256; the paper's 0.1 was at batch 4096); heads at most 8 x D wide (1024 for vit-pico).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import PositiveFloat, PositiveInt
from torch import Tensor, nn

from hybridssl.data.views import byol_asymmetric
from hybridssl.losses import nnclr
from hybridssl.methods.base import MOCOV3_VIT_OPTIM, Batch, Method, MethodConfig, register
from hybridssl.nn.heads import head_width, mlp
from hybridssl.nn.queue import FeatureQueue
from hybridssl.nn.vit import Pooling, pool


class NNCLRConfig(MethodConfig):
    temperature: PositiveFloat = 0.2
    queue_size: PositiveInt | None = None  # None: min(the paper's size, training images / 4)
    topk: PositiveInt = 1  # 1: the nearest neighbour; k: one of the k nearest, uniformly
    exclude_self: bool = True
    proj_hidden_dim: PositiveInt | None = None  # None: 2048, at most 8 x D for narrow encoders
    proj_dim: PositiveInt = 256
    pred_hidden_dim: PositiveInt | None = None  # None: 4096, at most 8 x D for narrow encoders
    pooling: Pooling = "cls"


def queue_length(requested: int | None, num_images: int | None, paper_size: int) -> int:
    """The queue length: the one asked for, else the paper's capped at a quarter of the training set
    (docs/methods.md 2f, 6.1f). The engine checks every queue against the data (engine/train.check_queues)."""
    if requested is None:
        return paper_size if num_images is None else max(1, min(paper_size, num_images // 4))
    return requested


def nnclr_heads(dim: int, cfg: NNCLRConfig) -> tuple[nn.Module, nn.Module, dict[str, int]]:
    """(projector, predictor, their resolved widths): the paper's 2048 / 4096, at most 8 x D (module docstring)."""
    proj_hidden = cfg.proj_hidden_dim or head_width(2048, dim)
    pred_hidden = cfg.pred_hidden_dim or head_width(4096, dim)
    projector = mlp(dim, proj_hidden, cfg.proj_dim, num_layers=3, last_norm="affine")
    predictor = mlp(cfg.proj_dim, pred_hidden, cfg.proj_dim)
    return projector, predictor, {"proj_hidden_dim": proj_hidden, "pred_hidden_dim": pred_hidden}


def swapped_neighbour_loss(queue: FeatureQueue, predictions: list[Tensor], keys: list[Tensor], batch: Batch,
                           temperature: float, topk: int, exclude_self: bool) -> dict[str, Tensor]:  # fmt: skip
    """NNCLR's symmetric loss (l(p1, n2) + l(p2, n1)) / 2, n_v the queue neighbour of view v's key; then
    view 1's keys are enqueued (after the lookup: no view finds itself). `nn_acc` when labels are known."""
    exclude = batch.ids if exclude_self else None
    (n1, i1), (n2, _) = (queue.nearest(k, exclude, topk) for k in keys)
    loss = (nnclr(predictions[0], n2, temperature) + nnclr(predictions[1], n1, temperature)) / 2
    losses = {"loss": loss}
    if (batch.labels >= 0).any():
        losses["nn_acc"] = queue.nn_accuracy(i1, batch.labels)
    queue.enqueue(keys[0], batch.ids, batch.labels)
    return losses


@register
class NNCLR(Method):
    name = "nnclr"
    Config = NNCLRConfig
    run_defaults = {"optim": MOCOV3_VIT_OPTIM}
    broadcast_buffers = False  # the queue is written from gathered batches: identical on every rank
    paper_queue_size: ClassVar[int] = 98304

    def __init__(self, cfg: NNCLRConfig, encoder, info) -> None:
        super().__init__(cfg, encoder, info)
        self.views = byol_asymmetric(info)
        self.projector, self.predictor, widths = nnclr_heads(encoder.embed_dim, cfg)
        size = queue_length(cfg.queue_size, info.num_images, self.paper_queue_size)
        self.queue = FeatureQueue(size, cfg.proj_dim)
        self.resolved = {**widths, "queue_size": size}

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        features = pool(self.encoder(torch.cat(batch.views)), self.cfg.pooling).chunk(2)
        z = [self.projector(h) for h in features]
        p = [self.predictor(x) for x in z]
        return swapped_neighbour_loss(self.queue, p, z, batch, self.cfg.temperature, self.cfg.topk, self.cfg.exclude_self)
