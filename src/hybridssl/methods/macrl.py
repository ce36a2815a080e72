"""MACRL (Yao, Desai, Palaniswami 2022; docs/methods.md 5, 5a'): an asymmetric siamese MAE + MoCo.

Main branch: a strongly augmented view, 75% of its patches masked, through the trainable encoder
(patch embedding included). Momentum branch: an EMA copy of encoder and projector (0.99 -> 1, cosine)
on a weakly augmented, unmasked view. Contrastive: MoCo InfoNCE (tau 0.2) of the main projection
against the momentum projection of the same image, with the feature queue's entries as negatives;
the momentum projections are enqueued after the loss. Reconstruction: one shallow trainable decoder
(2 blocks) applied to both branches' tokens, L1 against the original image: on the main branch's
masked patches (trains encoder + decoder) and, switchable with `momentum_branch_recon`, on all
patches of the momentum branch (its tokens come from the EMA encoder, so this trains the decoder only).

No code of the paper is public; this is the default docs/methods.md 5a' chooses. Choices of ours: "the
original image" of the main branch is its crop before the colour operations (same geometry, no
colour corruption), of the momentum branch the weak view itself; targets are norm-pix
(`norm_pix: false` for raw pixels); features are the mean of the (visible) patch tokens; loss =
reconstruction (+ momentum reconstruction) + contrastive. `weak_mask_ratio` > 0 masks the momentum
branch too (the abstract's "weaker corruption").

Small-scale choices: queue 4096 (docs/methods.md 8, CIFAR-size; it must not exceed the training set, or the
negatives hold stale copies of every image); decoder 128 wide with 4 heads (the paper's guess is 512
and 16: `decoder_dim: 512, decoder_heads: 16`); projector 2048 -> 128 as specified (cheap at any width).
"""

from __future__ import annotations

import torch
from pydantic import Field, PositiveFloat, PositiveInt
from torch import Tensor, nn

from hybridssl.data.views import strong_weak
from hybridssl.losses import info_nce_queue, masked_l1
from hybridssl.methods.base import MAE_OPTIM, Batch, Method, MethodConfig, register
from hybridssl.nn.decoders import pixel_decoder
from hybridssl.nn.heads import mlp
from hybridssl.nn.masking import Mask, no_mask, random_mask
from hybridssl.nn.momentum import EMA, Schedule, momentum_at
from hybridssl.nn.patches import pixel_target
from hybridssl.nn.queue import FeatureQueue
from hybridssl.nn.vit import pool


class MACRLConfig(MethodConfig):
    mask_ratio: float = Field(0.75, ge=0, lt=1)
    weak_mask_ratio: float = Field(0.0, ge=0, lt=1)
    weak_crop_scale: tuple[float, float] = (0.2, 1.0)
    norm_pix: bool = True
    momentum_branch_recon: bool = True
    decoder_dim: PositiveInt = 128
    decoder_depth: PositiveInt = 2
    decoder_heads: PositiveInt = 4
    proj_hidden_dim: PositiveInt = 2048
    proj_dim: PositiveInt = 128
    queue_size: PositiveInt = 4096
    temperature: PositiveFloat = 0.2
    contrastive_weight: float = Field(1.0, ge=0)
    momentum: float = Field(0.99, ge=0, le=1)
    momentum_end: float = Field(1.0, ge=0, le=1)
    momentum_schedule: Schedule = "cosine"


@register
class MACRL(Method):
    name = "macrl"
    Config = MACRLConfig
    eval_pooling = "mean_patch"  # the contrastive feature is the mean patch token
    run_defaults = {"optim": MAE_OPTIM}
    # the queue is written from gathered keys, the EMA branch follows identical weights and the
    # projectors' BatchNorm sees the global batch: every buffer is the same on every rank
    broadcast_buffers = False

    def __init__(self, cfg: MACRLConfig, encoder, info) -> None:
        super().__init__(cfg, encoder, info)
        self.views = strong_weak(info, cfg.weak_crop_scale, clean_strong=True)
        self.decoder = pixel_decoder(encoder.cfg, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads)
        self.projector = mlp(encoder.embed_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.momentum_encoder = EMA(encoder)
        self.momentum_projector = EMA(self.projector)
        self.queue = FeatureQueue(cfg.queue_size, cfg.proj_dim)

    def target(self, images: Tensor) -> Tensor:
        return pixel_target(images, self.encoder.cfg.patch_size, self.cfg.norm_pix)

    def masked_branch(self, images: Tensor, mask: Mask) -> tuple[Tensor, Tensor]:
        """The main encoder's latent of the visible patches and the decoder's prediction of all patches."""
        latent = self.encoder(images, mask.ids_keep)
        return latent, self.decoder(latent, mask.ids_restore)

    def reconstruct(self, images: Tensor) -> tuple[Tensor, Mask]:
        mask = random_mask(images.shape[0], self.encoder.cfg.num_patches, self.cfg.mask_ratio, images.device)
        return self.masked_branch(images, mask)[1], mask

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        strong, weak, clean = batch.views[0], batch.views[1], batch.views[2]
        size, n = strong.shape[0], self.encoder.cfg.num_patches
        mask = random_mask(size, n, self.cfg.mask_ratio, strong.device)
        latent, prediction = self.masked_branch(strong, mask)
        query = self.projector(pool(latent, "mean_patch"))

        with torch.no_grad():
            ratio = self.cfg.weak_mask_ratio
            weak_mask = random_mask(size, n, ratio, weak.device) if ratio > 0 else no_mask(size, n, weak.device)
            momentum_latent = self.momentum_encoder(weak, weak_mask.ids_keep)
            key = self.momentum_projector(pool(momentum_latent, "mean_patch"))

        # a copy of the negatives: the queue is written below, before backward needs them
        contrastive = info_nce_queue(query, key, self.queue.features.clone(), self.cfg.temperature)
        reconstruction = masked_l1(prediction, self.target(clean), mask.mask)
        losses = {"reconstruction": reconstruction, "contrastive": contrastive}
        loss = reconstruction + self.cfg.contrastive_weight * contrastive
        if self.cfg.momentum_branch_recon:
            momentum_pred = self.decoder(momentum_latent, weak_mask.ids_restore)  # tokens carry no gradient
            momentum_recon = masked_l1(momentum_pred, self.target(weak), torch.ones_like(weak_mask.mask))
            losses["momentum_reconstruction"] = momentum_recon
            loss = loss + momentum_recon

        self.queue.enqueue(key, batch.ids, batch.labels)
        return {"loss": loss, **losses}

    def momentum_pairs(self) -> list[tuple[EMA, nn.Module]]:
        return [(self.momentum_encoder, self.encoder), (self.momentum_projector, self.projector)]

    def after_step(self, progress: float) -> None:
        m = momentum_at(progress, self.cfg.momentum, self.cfg.momentum_end, self.cfg.momentum_schedule)
        self.update_momentum(m)
