"""View recipes: augmentation pipelines applied batched, with per-sample randomness, on the device.

A method names its recipe; the engine calls it on the uint8 batch right before the step. Pipelines are
kornia augmentations (per-sample parameters on whole batches, any device).

Every recipe starts with random-resized crops (`crops`: output size, scale range, flip), and the rest
(`finish`) works on the crops. In memory the crops are cut on the device from the stored images
(`__call__`); when data streams from files, the DataLoader workers cut them from the full-resolution
photo at decode time (data/streaming.py, as the official MAE pipeline does) and the device runs only
`finish`, batched, as before. Scaling to small images:
colour operations that need three channels are dropped for greyscale data; Gaussian blur is dropped
below 64 px (solo-learn and lightly do the same for CIFAR); the random-resized-crop lower bound is
raised from the papers' 0.08 to 0.2 below 32 px, where an 8% crop of a 28 px image is ~8x8 pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import kornia.augmentation as K
import torch
from torch import Tensor, nn

from hybridssl.data.rand_augment import RandAugment
from hybridssl.data.sources import DataInfo


def to_unit(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float [0, 1]; float input is passed through."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


@dataclass(frozen=True)
class Crop:
    """A random-resized crop to `size` x `size` (area fraction in `scale`, aspect ratio in `ratio`),
    then a horizontal flip with probability 1/2: the first step of every view. The fine-tune recipe
    adds RandAugment, which works per image (timm's PIL ops), so it belongs to this per-sample step:
    DataLoader workers run it where they cut the crop."""

    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rand_augment: RandAugment | None = None


def crop_flip_pipeline(size: int, scale: tuple[float, float], ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> nn.Module:
    return K.AugmentationSequential(
        K.RandomResizedCrop((size, size), scale=scale, ratio=ratio, resample="bicubic"), K.RandomHorizontalFlip()
    )


class Views:
    """One crop + one pipeline per view; returns normalized float views (B x C x H x W each)."""

    def __init__(self, crops: Sequence[Crop], info: DataInfo, finishers: Sequence[nn.Module] | None = None) -> None:
        self.crops = list(crops)
        self.device_crops = [crop_flip_pipeline(c.size, c.scale, c.ratio) for c in self.crops]
        self.finishers = list(finishers) if finishers is not None else [nn.Identity() for _ in self.crops]
        self.mean = torch.tensor(info.mean).view(1, -1, 1, 1)
        self.std = torch.tensor(info.std).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.crops)

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def __call__(self, images: Tensor) -> list[Tensor]:
        """Views of whole stored images: crops cut here, on the images' device."""
        x = to_unit(images)
        crops = [cut(x).clamp_(0, 1) for cut in self.device_crops]
        crops = [c.rand_augment.batch(cut) if c.rand_augment else cut for c, cut in zip(self.crops, crops, strict=True)]
        return self.finish(crops)

    def finish(self, crops: Sequence[Tensor]) -> list[Tensor]:
        """Views from crops already cut (one batch per `crops` entry, uint8 or float in [0, 1])."""
        return [self.normalize(f(to_unit(c)).clamp_(0, 1)) for f, c in zip(self.finishers, crops, strict=True)]


def min_crop_scale(info: DataInfo, paper: float = 0.08) -> float:
    return paper if info.image_size >= 32 else max(paper, 0.2)


def colour_pipeline(
    info: DataInfo, jitter: tuple[float, float, float, float], jitter_p: float, grey_p: float, blur_p: float, solarize_p: float = 0.0
) -> list[nn.Module]:
    """Colour jitter (brightness, contrast, saturation, hue), greyscale, blur, solarize, adapted to the data."""
    brightness, contrast, saturation, hue = jitter
    if info.channels == 1:
        saturation, hue, grey_p = 0.0, 0.0, 0.0
    ops: list[nn.Module] = [K.ColorJitter(brightness, contrast, saturation, hue, p=jitter_p)]
    if grey_p > 0:
        ops.append(K.RandomGrayscale(p=grey_p))
    if blur_p > 0 and info.image_size >= 64:
        kernel = max(3, int(0.1 * info.image_size) // 2 * 2 + 1)  # ~10% of the image, odd
        ops.append(K.RandomGaussianBlur((kernel, kernel), (0.1, 2.0), p=blur_p))
    if solarize_p > 0:
        ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p))  # threshold 0.5 = 128/255
    return ops


def crop_flip(info: DataInfo, num_views: int = 1, scale: tuple[float, float] = (0.2, 1.0)) -> Views:
    """MAE's recipe (one view, scale 0.2-1) and MAE-CT's minimal recipe (two views, 0.08-1)."""
    return Views([Crop(info.image_size, tuple(scale)) for _ in range(num_views)], info)


def simclr(info: DataInfo, num_views: int = 2, strength: float = 1.0) -> Views:
    """SimCLR: crop 0.08-1, flip, jitter (0.8s, 0.8s, 0.8s, 0.2s) p 0.8, greyscale p 0.2, blur p 0.5."""
    s = strength
    crop = Crop(info.image_size, (min_crop_scale(info), 1.0))
    colour = [nn.Sequential(*colour_pipeline(info, (0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s), 0.8, 0.2, 0.5)) for _ in range(num_views)]
    return Views([crop] * num_views, info, colour)


def byol_asymmetric(info: DataInfo) -> Views:
    """BYOL / MoCo v3 / MAE-CT_aug: jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grey p 0.2; blur p 1.0 on view 1,
    p 0.1 and solarize p 0.2 on view 2."""
    def colour(blur_p: float, solarize_p: float) -> nn.Module:
        return nn.Sequential(*colour_pipeline(info, (0.4, 0.4, 0.2, 0.1), 0.8, 0.2, blur_p, solarize_p))
    crop = Crop(info.image_size, (min_crop_scale(info), 1.0))
    return Views([crop, crop], info, [colour(1.0, 0.0), colour(0.1, 0.2)])


class StrongWeak(Views):
    """MACRL: [strong, weak] or, with `clean_strong`, [strong, weak, clean]. The strong view is SimCLR's
    recipe (for the masked branch), the weak one crop+flip (for the momentum branch); `clean` is the
    strong view's crop+flip before its colour operations, i.e. the same pixels without the colour
    corruption (MACRL's reconstruction target, "the original image")."""

    def __init__(self, info: DataInfo, weak_scale: tuple[float, float] = (0.2, 1.0), clean_strong: bool = False) -> None:
        crops = [Crop(info.image_size, (min_crop_scale(info), 1.0)), Crop(info.image_size, tuple(weak_scale))]
        super().__init__(crops, info)
        self.strong_colour = nn.Sequential(*colour_pipeline(info, (0.8, 0.8, 0.8, 0.2), 0.8, 0.2, 0.5))
        self.clean_strong = clean_strong

    def __len__(self) -> int:
        return 3 if self.clean_strong else 2

    def finish(self, crops: Sequence[Tensor]) -> list[Tensor]:
        clean, weak = to_unit(crops[0]), to_unit(crops[1])
        strong = self.strong_colour(clean).clamp(0, 1)
        views = [self.normalize(strong), self.normalize(weak)]
        return views + [self.normalize(clean)] if self.clean_strong else views


def strong_weak(info: DataInfo, weak_scale: tuple[float, float] = (0.2, 1.0), clean_strong: bool = False) -> StrongWeak:
    """MACRL: a SimCLR-strong view for the masked branch and a crop+flip view for the momentum branch."""
    return StrongWeak(info, weak_scale, clean_strong)


def default_max_shift(image_size: int) -> int:
    """CMAE's pixel shift scaled to the image: 31 px at 224 (docs/methods.md A4), 4 px at 28-32, 9 at 64."""
    return round(image_size * 31 / 224)


class PixelShiftPair(Views):
    """CMAE's view pair (docs/methods.md A4): one master crop of side S + s_max + 1 (the official code
    requires s_max + S < master side); the online view is its S x S corner at (0, 0), the target view
    the S x S window at a per-sample offset (dy, dx), each uniform in {0..s_max}, followed by colour
    augmentation on the target only (jitter (0.4, 0.4, 0.4, 0.1) p 0.8, greyscale p 0.2, blur p 0.5,
    adapted to the data as in `colour_pipeline`)."""

    def __init__(self, info: DataInfo, max_shift: int | None = None) -> None:
        size = info.image_size
        self.size = size
        self.max_shift = default_max_shift(size) if max_shift is None else max_shift
        if self.max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {self.max_shift}")
        super().__init__([Crop(size + self.max_shift + 1, (0.2, 1.0))], info)  # the master crop
        self.target_colour = nn.Sequential(*colour_pipeline(info, (0.4, 0.4, 0.4, 0.1), 0.8, 0.2, 0.5))

    def __len__(self) -> int:
        return 2

    def shifted_windows(self, master: Tensor, offsets: Tensor) -> Tensor:
        """B x C x M x M master, B x 2 offsets (dy, dx) -> B x C x S x S windows."""
        steps = torch.arange(self.size, device=master.device)
        rows = (offsets[:, 0:1] + steps).view(-1, 1, self.size, 1).expand(-1, master.shape[1], -1, master.shape[3])
        cols = (offsets[:, 1:2] + steps).view(-1, 1, 1, self.size).expand(-1, master.shape[1], self.size, -1)
        return master.gather(2, rows).gather(3, cols)

    def with_offsets(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(online, target, offsets B x 2) of whole stored images."""
        return self.from_master(self.device_crops[0](to_unit(images)).clamp_(0, 1))

    def from_master(self, master: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(online, target, offsets B x 2): the pair and where the target window sits in the master."""
        master = to_unit(master)
        online = master[:, :, : self.size, : self.size]
        offsets = torch.randint(0, self.max_shift + 1, (len(master), 2), device=master.device)
        target = self.target_colour(self.shifted_windows(master, offsets)).clamp_(0, 1)
        return self.normalize(online), self.normalize(target), offsets

    def finish(self, crops: Sequence[Tensor]) -> list[Tensor]:
        online, target, _ = self.from_master(crops[0])
        return [online, target]


def identity(info: DataInfo) -> Views:
    """The image itself, normalized: evaluation and pictures (its one crop is the whole image)."""
    views = Views([Crop(info.image_size, (1.0, 1.0), (1.0, 1.0))], info)
    views.device_crops = [nn.Identity()]
    return views
