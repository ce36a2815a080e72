"""CMAE (Huang et al. 2022; docs/methods.md section 3): an MAE whose masked encoder also feeds a feature
decoder, trained to predict a momentum encoder's view of a pixel-shifted, colour-augmented crop.

Online branch: the (0, 0) crop of a master view, 2x2-block masked at 0.65, through the encoder; a
pixel decoder reconstructs the removed patches (norm-pix MSE) and a 2-block feature decoder (own
weights and mask token, output width = encoder width) is averaged over all tokens, projected and
predicted. Target branch: the EMA encoder on the full shifted view, taken *before* the final norm and
averaged over the patch tokens, through the EMA projector. Loss = reconstruction + 2 tau * InfoNCE
(one direction, tau 0.07, negatives = the target projections of the global batch).

Paper vs official code (defaults follow the code, docs/methods.md 3d/3f): the paper describes MAE's 75%
random masking (`mask: random, mask_ratio: 0.75`) and a cosine momentum schedule
(`momentum_schedule: cosine`); the code masks 65% in 2x2 blocks with a constant momentum of 0.996.

Small-scale choices: the pixel shift scales with the image (round(S * 31/224): 4 px at 28 px, 31 at
224); decoders are 128 wide with 4 heads (pixel: 4 blocks, as our MAE so CMAE vs MAE is fair; the
code's ViT-B sizes are `decoder_dim: 512, decoder_depth: 8, decoder_heads: 16`); the projector and
predictor keep the paper's 1536 -> 256 (cheap at any encoder width). On a grid with an odd side
(28 px / patch 4 = 7x7) the 2x2 blocks tile a 6x6 window placed at a random offset per image
(`nn.masking.block_mask`): int(49/4 * 0.35) = 4 blocks = 16 patches are kept (67.3% removed; the
code's 14x14 grid removes 65.3%), so the encoder and its 28 px input stay those of every other method.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt
from torch import Tensor, nn

from hybridssl.settings import ConfigError
from hybridssl.data.views import PixelShiftPair
from hybridssl.losses import info_nce, masked_mse
from hybridssl.methods.base import MAE_OPTIM, Batch, Method, MethodConfig, register
from hybridssl.nn.decoders import TokenDecoder, pixel_decoder
from hybridssl.nn.heads import mlp
from hybridssl.nn.masking import Mask, block_mask, random_mask
from hybridssl.nn.momentum import EMA, Schedule, momentum_at
from hybridssl.nn.patches import pixel_target
from hybridssl.nn.vit import pool


class CMAEConfig(MethodConfig):
    mask: Literal["block", "random"] = "block"
    mask_ratio: float = Field(0.65, ge=0, lt=1)
    block_unit: PositiveInt = 2
    max_shift: NonNegativeInt | None = None  # None: round(image_size * 31 / 224)
    norm_pix: bool = True
    decoder_dim: PositiveInt = 128
    decoder_depth: PositiveInt = 4
    decoder_heads: PositiveInt = 4
    feature_decoder_depth: PositiveInt = 2
    proj_hidden_dim: PositiveInt = 1536
    proj_dim: PositiveInt = 256
    temperature: PositiveFloat = 0.07
    reconstruction_weight: float = Field(1.0, ge=0)
    contrastive_weight: float = Field(1.0, ge=0)
    momentum: float = Field(0.996, ge=0, le=1)
    momentum_end: float = Field(1.0, ge=0, le=1)  # used by the cosine schedule only
    momentum_schedule: Schedule = "constant"


@register
class CMAE(Method):
    name = "cmae"
    Config = CMAEConfig
    eval_pooling = "mean_patch"  # the contrastive target is the mean patch token
    run_defaults = {"optim": MAE_OPTIM}

    def __init__(self, cfg: CMAEConfig, encoder, info) -> None:
        super().__init__(cfg, encoder, info)
        enc = encoder.cfg
        if cfg.mask == "block" and enc.grid_size < cfg.block_unit:
            raise ConfigError(f"method_args.block_unit: {cfg.block_unit} exceeds the {enc.grid_size}x{enc.grid_size} patch grid")
        self.views = PixelShiftPair(info, cfg.max_shift)
        self.pixel_decoder = pixel_decoder(enc, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads)
        self.feature_decoder = TokenDecoder(  # output width = encoder width, so g and its EMA g' see one width
            enc.embed_dim, enc.grid_size, cfg.decoder_dim, cfg.feature_decoder_depth, cfg.decoder_heads, enc.embed_dim
        )
        self.projector = mlp(enc.embed_dim, cfg.proj_hidden_dim, cfg.proj_dim, hidden_bias=True)
        self.predictor = mlp(cfg.proj_dim, cfg.proj_hidden_dim, cfg.proj_dim, hidden_bias=True)
        self.target_encoder = EMA(encoder)
        self.target_projector = EMA(self.projector)

    def online_mask(self, batch: int, device: torch.device) -> Mask:
        enc = self.encoder.cfg
        if self.cfg.mask == "block":
            return block_mask(batch, enc.grid_size, self.cfg.mask_ratio, self.cfg.block_unit, device)
        return random_mask(batch, enc.num_patches, self.cfg.mask_ratio, device)

    def masked_branch(self, images: Tensor, mask: Mask) -> tuple[Tensor, Tensor]:
        """The online encoder's latent of the visible patches and the pixel decoder's prediction."""
        latent = self.encoder(images, mask.ids_keep)
        return latent, self.pixel_decoder(latent, mask.ids_restore)

    def reconstruct(self, images: Tensor) -> tuple[Tensor, Mask]:
        mask = self.online_mask(images.shape[0], images.device)
        return self.masked_branch(images, mask)[1], mask

    def target_features(self, target_view: Tensor) -> Tensor:
        """Mean patch token of the EMA encoder on the full view, before the final norm."""
        with torch.no_grad():
            return pool(self.target_encoder(target_view, final_norm=False), "mean_patch")

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        online, target = batch.views[0], batch.views[1]
        mask = self.online_mask(online.shape[0], online.device)
        latent, pixels = self.masked_branch(online, mask)
        target_pixels = pixel_target(online, self.encoder.cfg.patch_size, self.cfg.norm_pix)
        reconstruction = masked_mse(pixels, target_pixels, mask.mask)

        features = self.feature_decoder(latent, mask.ids_restore).mean(dim=1)
        prediction = self.predictor(self.projector(features))
        with torch.no_grad():
            key = self.target_projector(self.target_features(target))
        tau = self.cfg.temperature
        contrastive = info_nce(prediction, key, tau, scale=2 * tau)

        loss = self.cfg.reconstruction_weight * reconstruction + self.cfg.contrastive_weight * contrastive
        return {"loss": loss, "reconstruction": reconstruction, "contrastive": contrastive}

    def momentum_pairs(self) -> list[tuple[EMA, nn.Module]]:
        return [(self.target_encoder, self.encoder), (self.target_projector, self.projector)]

    def after_step(self, progress: float) -> None:
        m = momentum_at(progress, self.cfg.momentum, self.cfg.momentum_end, self.cfg.momentum_schedule)
        self.update_momentum(m)
