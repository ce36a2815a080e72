"""SimCLR (Chen et al. 2020; docs/methods.md 6.3) on a ViT: two strongly augmented views of each image, one
shared encoder and MLP projector, NT-Xent against every other view of the global batch.

The paper trains ResNets with LARS at batch 4096 and tau 0.1. For the ViT we use the recipe MoCo v3
used for its ViT baselines: AdamW (betas 0.9/0.999), base lr 1.5e-4 per 256 images, wd 0.1, CLS
pooling; the projector is Linear-BN-ReLU-Linear to 128 (2048 hidden), applied to both views in one
batch as SimCLR does (BatchNorm statistics over both views).
Small scale [S]: tau 0.2 (the CIFAR value of solo-learn at batch 256; 0.1 needs batches of thousands);
the projector is at most 8 x D wide (1024 for vit-pico, `nn.heads.head_width`); the views are
`data.views.simclr` (no blur below 64 px, no colour jitter of saturation/hue on greyscale images).
"""

from __future__ import annotations

import torch
from pydantic import Field, PositiveFloat, PositiveInt
from torch import Tensor

from hybridssl.data.views import simclr
from hybridssl.losses import nt_xent
from hybridssl.methods.base import MOCOV3_VIT_OPTIM, Batch, Method, MethodConfig, register
from hybridssl.nn.heads import head_width, mlp
from hybridssl.nn.vit import Pooling, pool


class SimCLRConfig(MethodConfig):
    temperature: PositiveFloat = 0.2
    proj_hidden_dim: PositiveInt | None = None  # None: 2048, at most 8 x D for narrow encoders
    proj_dim: PositiveInt = 128
    pooling: Pooling = "cls"
    color_strength: float = Field(1.0, ge=0)  # s of the colour jitter (0.8s, 0.8s, 0.8s, 0.2s)


@register
class SimCLR(Method):
    name = "simclr"
    Config = SimCLRConfig
    run_defaults = {"optim": MOCOV3_VIT_OPTIM}

    def __init__(self, cfg: SimCLRConfig, encoder, info) -> None:
        super().__init__(cfg, encoder, info)
        self.views = simclr(info, num_views=2, strength=cfg.color_strength)
        hidden = cfg.proj_hidden_dim or head_width(2048, encoder.embed_dim)
        self.projector = mlp(encoder.embed_dim, hidden, cfg.proj_dim, num_layers=2, last_bias=True)
        self.resolved = {"proj_hidden_dim": hidden}

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        features = pool(self.encoder(torch.cat(batch.views)), self.cfg.pooling)
        z1, z2 = self.projector(features).chunk(2)
        return {"loss": nt_xent(z1, z2, self.cfg.temperature)}
