"""CAN (Mishra et al. 2022; docs/methods.md section 4): SimCLR + MAE + denoising with one encoder and no
momentum network.

Each image gives two SimCLR-style views; each view gets Gaussian noise of a per-image level
sigma ~ U(0, sigma_max) and 50% random masking. The decoder, told the noise level (sin-cos embedding +
MLP, docs/methods.md A9), predicts the *clean* view's norm-pix patches at the removed positions and the
added noise at the visible ones. NT-Xent (tau 0.1, negatives gathered across ranks, which the
official code does not do) on the projected mean of the visible patch tokens. Loss =
0.03 contrastive + 0.67 reconstruction + 0.3 denoising.

Where the three implementations disagree (docs/methods.md 4d/4f), the defaults follow the paper and fix
the official code's slips; the alternatives are options:
- mask 0.5 per view and sigma_max 0.05 (paper); the official code runs 0.75 and 0.1.
- the reconstruction target is the clean view (bwconrad); the official code's in-place noise makes
  it the noisy one.
- pooling over patch tokens only (bwconrad); the official code also averages the CLS token.
- the noise embedding is added after the un-shuffle to every decoder token (bwconrad; it reaches the
  mask tokens too); `noise_embed_at: encoder_tokens` adds it to the encoder tokens before the
  decoder embedding, as the official code does.
- the denoising target is the noise standardized per patch like the norm-pix target (bwconrad, and
  the unit-variance epsilon of diffusion models); `noise_target: raw` regresses the raw noise, whose
  loss is of order sigma^2 and so nearly inert at weight 0.3.
- `rescale_sigma` embeds sigma / sigma_max * 1000 like a diffusion timestep: an unverified tweak
  ([S]) against the near-constant embedding of sigma <= 0.05; off by default.
- the projector is bwconrad's BatchNorm MLP, run once per view so its statistics are per view (the
  views share one 2B pass through the encoder, which has no BatchNorm); the official code uses
  Linear(D, D)-ReLU-Linear(D, 128) without BatchNorm.

Small-scale choices: projector hidden width 2048 (bwconrad 4096) with 128 outputs; decoder 128 wide,
4 blocks, 4 heads as our MAE (the paper's `decoder_dim: 512, decoder_depth: 8, decoder_heads: 16`).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PositiveFloat, PositiveInt, model_validator
from torch import Tensor, nn

from hybridssl.data.views import simclr
from hybridssl.losses import masked_mse, noise_mse, nt_xent
from hybridssl.methods.base import MAE_OPTIM, Batch, Method, MethodConfig, register
from hybridssl.nn.decoders import pixel_decoder
from hybridssl.nn.heads import mlp
from hybridssl.nn.masking import Mask, random_mask
from hybridssl.nn.patches import patchify, pixel_target
from hybridssl.nn.pos_embed import sincos_scalar
from hybridssl.nn.vit import pool
from hybridssl.settings import renamed_settings


class CANConfig(MethodConfig):
    mask_ratio: float = Field(0.5, ge=0, lt=1)
    sigma_max: float = Field(0.05, ge=0)
    norm_pix: bool = True
    noise_target: Literal["normalized", "raw"] = "normalized"
    noise_embed_at: Literal["decoder_tokens", "encoder_tokens"] = "decoder_tokens"
    noise_embed_dim: int = Field(128, ge=4, multiple_of=2)
    rescale_sigma: bool = False
    decoder_dim: PositiveInt = 128
    decoder_depth: PositiveInt = 4
    decoder_heads: PositiveInt = 4
    proj_layers: int = Field(3, ge=1)
    proj_hidden_dim: PositiveInt = 2048
    proj_dim: PositiveInt = 128
    temperature: PositiveFloat = 0.1
    contrastive_weight: float = Field(0.03, ge=0)
    reconstruction_weight: float = Field(0.67, ge=0)
    noise_weight: float = Field(0.3, ge=0)
    color_strength: float = Field(1.0, ge=0)  # SimCLR jitter strength s; the official code's recipe is ~0.5

    _renamed = model_validator(mode="before")(renamed_settings({"colour_strength": "color_strength"}))


@register
class CAN(Method):
    name = "can"
    Config = CANConfig
    eval_pooling = "mean_patch"  # the contrastive loss shapes the mean patch token
    run_defaults = {"optim": {**MAE_OPTIM, "base_lr": 2.5e-4}}

    def __init__(self, cfg: CANConfig, encoder, info) -> None:
        super().__init__(cfg, encoder, info)
        width = encoder.embed_dim
        self.views = simclr(info, num_views=2, strength=cfg.color_strength)
        self.decoder = pixel_decoder(encoder.cfg, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads)
        level_dim = cfg.decoder_dim if cfg.noise_embed_at == "decoder_tokens" else width
        self.noise_embed = nn.Sequential(
            nn.Linear(cfg.noise_embed_dim, level_dim), nn.ReLU(), nn.Linear(level_dim, level_dim)
        )
        self.projector = mlp(width, cfg.proj_hidden_dim, cfg.proj_dim, num_layers=cfg.proj_layers)

    def noise_level_embedding(self, sigma: Tensor) -> Tensor:
        scale = 1000.0 / self.cfg.sigma_max if self.cfg.rescale_sigma and self.cfg.sigma_max > 0 else 1.0
        return self.noise_embed(sincos_scalar(self.cfg.noise_embed_dim, sigma * scale))

    def decode(self, latent: Tensor, mask: Mask, sigma: Tensor) -> Tensor:
        """Decoder told the noise level: pixels at the removed patches, noise at the visible ones."""
        level = self.noise_level_embedding(sigma)
        if self.cfg.noise_embed_at == "encoder_tokens":
            return self.decoder(latent + level.unsqueeze(1), mask.ids_restore)
        return self.decoder(latent, mask.ids_restore, cond=level)

    def masked_branch(self, images: Tensor, mask: Mask, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """The encoder's latent of the visible (noised) patches and the decoder's prediction at level sigma."""
        latent = self.encoder(images, mask.ids_keep)
        return latent, self.decode(latent, mask, sigma)

    def reconstruct(self, images: Tensor) -> tuple[Tensor, Mask]:
        """Prediction for a clean image (sigma = 0)."""
        mask = random_mask(images.shape[0], self.encoder.cfg.num_patches, self.cfg.mask_ratio, images.device)
        return self.masked_branch(images, mask, torch.zeros(images.shape[0], device=images.device))[1], mask

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        clean = torch.cat([batch.views[0], batch.views[1]])  # 2B views, one encoder pass
        sigma = torch.rand(clean.shape[0], device=clean.device) * self.cfg.sigma_max
        noise = sigma.view(-1, 1, 1, 1) * torch.randn_like(clean)
        mask = random_mask(clean.shape[0], self.encoder.cfg.num_patches, self.cfg.mask_ratio, clean.device)
        latent, pred = self.masked_branch(clean + noise, mask, sigma)
        p = self.encoder.cfg.patch_size
        reconstruction = masked_mse(pred, pixel_target(clean, p, self.cfg.norm_pix), mask.mask)
        denoising = noise_mse(pred, patchify(noise, p), mask.mask, normalize=self.cfg.noise_target == "normalized")

        z1, z2 = (self.projector(h) for h in pool(latent, "mean_patch").chunk(2))  # BatchNorm per view
        contrastive = nt_xent(z1, z2, self.cfg.temperature)

        cfg = self.cfg
        loss = (
            cfg.contrastive_weight * contrastive + cfg.reconstruction_weight * reconstruction + cfg.noise_weight * denoising
        )
        return {"loss": loss, "contrastive": contrastive, "reconstruction": reconstruction, "denoising": denoising}
