"""View recipes: augmentation pipelines applied batched, with per-sample randomness, on the device.

A method names its recipe; the engine calls it on uint8 images right before the step. Pipelines are
kornia augmentations (per-sample parameters on whole batches, any device). Colour operations that
need three channels are left out for greyscale data.
"""

from __future__ import annotations

from collections.abc import Sequence

import kornia.augmentation as K
import torch
from torch import Tensor, nn

from hybridssl.data.sources import DataInfo


class Views:
    """One augmentation pipeline per view; returns normalized float views (B x C x H x W each)."""

    def __init__(self, pipelines: Sequence[nn.Module], info: DataInfo) -> None:
        self.pipelines = list(pipelines)
        self.mean = torch.tensor(info.mean).view(1, -1, 1, 1)
        self.std = torch.tensor(info.std).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.pipelines)

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def __call__(self, images: Tensor) -> list[Tensor]:
        x = to_unit(images)
        return [self.normalize(pipeline(x).clamp_(0, 1)) for pipeline in self.pipelines]


def to_unit(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float [0, 1]; float input is passed through."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


def random_resized_crop_flip(size: int, scale: tuple[float, float]) -> nn.Module:
    return K.AugmentationSequential(
        K.RandomResizedCrop((size, size), scale=scale, resample="bicubic"), K.RandomHorizontalFlip()
    )


def crop_flip(info: DataInfo, num_views: int = 1, scale: tuple[float, float] = (0.2, 1.0)) -> Views:
    """MAE's recipe (one view, scale 0.2-1) and MAE-CT's minimal recipe (two views, scale 0.08-1)."""
    return Views([random_resized_crop_flip(info.image_size, scale) for _ in range(num_views)], info)


def identity(info: DataInfo) -> Views:
    """The image itself, normalized: evaluation and pictures."""
    return Views([nn.Identity()], info)
