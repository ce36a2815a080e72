"""Frozen features: encoder tokens pooled by name, or raw pixels as the classical baseline."""

from __future__ import annotations

import torch
from torch import Tensor

from hybridssl.data.sources import DataInfo
from hybridssl.data.views import identity, to_unit
from hybridssl.nn.vit import Pooling, ViT, pool


@torch.inference_mode()
def encoder_features(
    encoder: ViT, images: Tensor, info: DataInfo, pooling: Pooling, batch_size: int = 512, device: str | torch.device = "cpu"
) -> Tensor:
    """uint8 images -> N x D features of the frozen encoder (eval mode, full view, no augmentation)."""
    normalize = identity(info).normalize
    encoder = encoder.to(device).eval()
    chunks = [pool(encoder(normalize(to_unit(images[i : i + batch_size].to(device)))), pooling).float().cpu()
              for i in range(0, len(images), batch_size)]  # fmt: skip
    return torch.cat(chunks) if chunks else torch.zeros(0, encoder.embed_dim)


def pixel_features(images: Tensor, info: DataInfo) -> Tensor:
    """Flattened, per-channel normalized pixels: the raw-pixel floor every encoder should beat."""
    return identity(info).normalize(to_unit(images)).flatten(1)
