"""MAE (He et al. 2021; docs/methods.md section 1): mask 75% of the patches, encode the rest, decode pixels.

Defaults follow the paper except the decoder size, scaled to small encoders (128 wide, 4 blocks;
the paper's ViT-B decoder is 512 x 8: set `decoder_dim: 512, decoder_depth: 8, decoder_heads: 16`).
Evaluation pools the mean of the patch tokens by default, as MAE-CT does for ViT-B; the MAE paper's
linear probe used the CLS token (`--pooling cls`). On Fashion-MNIST with vit-pico after 2 epochs,
mean-patch k-NN beat the random-init encoder by 6.1 points and CLS by 4.3 (BENCHMARKS.md).
"""

from __future__ import annotations

from pydantic import Field, PositiveInt
from torch import Tensor

from hybridssl.data.views import crop_flip
from hybridssl.losses import masked_mse
from hybridssl.methods.base import MAE_OPTIM, Batch, Method, MethodConfig, register
from hybridssl.nn.decoders import pixel_decoder
from hybridssl.nn.masking import Mask, random_mask
from hybridssl.nn.patches import pixel_target


class MAEConfig(MethodConfig):
    mask_ratio: float = Field(0.75, ge=0, lt=1)
    norm_pix: bool = True
    decoder_dim: PositiveInt = 128
    decoder_depth: PositiveInt = 4
    decoder_heads: PositiveInt = 4
    crop_scale: tuple[float, float] = (0.2, 1.0)


@register
class MAE(Method):
    name = "mae"
    Config = MAEConfig
    eval_pooling = "mean_patch"
    run_defaults = {"optim": MAE_OPTIM}
    # vit-pico on Fashion-MNIST: linear probe below the random-init ViT after 234 steps, above from 468
    # (BENCHMARKS.md, "MAE against optimizer steps")
    steps_to_beat_random_init = 468

    def __init__(self, cfg: MAEConfig, encoder, info) -> None:
        super().__init__(cfg, encoder, info)
        self.views = crop_flip(info, num_views=1, scale=cfg.crop_scale)
        self.decoder = pixel_decoder(encoder.cfg, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads)

    def reconstruct(self, images: Tensor) -> tuple[Tensor, Mask]:
        """Predicted patches (in norm-pix space when `norm_pix`) and the mask that was used."""
        mask = random_mask(images.shape[0], self.encoder.cfg.num_patches, self.cfg.mask_ratio, images.device)
        return self.decoder(self.encoder(images, mask.ids_keep), mask.ids_restore), mask

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        images = batch.views[0]
        pred, mask = self.reconstruct(images)
        target = pixel_target(images, self.encoder.cfg.patch_size, self.cfg.norm_pix)
        return {"loss": masked_mse(pred, target, mask.mask)}
