"""The fine-tune's batch regularisers from the MAE / CMAE recipe: random erasing, then mixup or cutmix.

Both run on the device on whole normalized batches and draw from torch's generators (the CPU one for
parameters, the device's for the noise), which a resumable fine-tune saves with its progress, so a
resumed fine-tune repeats them.

- Random erasing approximates timm's "pixel" mode with one box (the papers' `--reprob 0.25 --remode
  pixel`): with probability p an image gets a box of 2-33% of its area, aspect ratio 0.3-3.3, filled
  with N(0, 1) noise. kornia draws the boxes per image (its aspect ratio is uniform on each side of 1,
  timm's log-uniform, and a box too large to fit is shrunk where timm retries: at 32 px the mean box
  area is 0.176 against timm's 0.174); the noise fill is ours (kornia fills a constant).
- Mixup / cutmix are torchvision's: a Beta(alpha, alpha) weight per batch, each image mixed with its
  neighbour in the (shuffled) batch (timm pairs it with the reversed batch: the same distribution),
  cutmix's weight corrected to the pasted box's area. With both on, a batch gets cutmix with
  probability `cutmix_share` (timm's switch_prob), mixup otherwise. The labels come back as
  probabilities; label smoothing is then applied by the loss, which gives timm's mixed smoothed targets.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import Tensor, nn
from torchvision.transforms import v2


class RandomErasing(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.boxes = K.RandomErasing(scale=(0.02, 1 / 3), ratio=(0.3, 3.3), value=0.0, p=p)

    def forward(self, x: Tensor) -> Tensor:
        keep = self.boxes(torch.ones_like(x[:, :1])).bool()  # 0 inside each image's box (if it has one)
        return torch.where(keep, x, torch.randn_like(x))


def label_mixing(mixup: float, cutmix: float, cutmix_share: float, num_classes: int) -> nn.Module | None:
    """(images, int labels) -> (mixed images, label probabilities); None when both alphas are 0."""
    if mixup > 0 and cutmix > 0:
        mixers = [v2.MixUp(alpha=mixup, num_classes=num_classes), v2.CutMix(alpha=cutmix, num_classes=num_classes)]
        return v2.RandomChoice(mixers, p=[1 - cutmix_share, cutmix_share])
    if mixup > 0:
        return v2.MixUp(alpha=mixup, num_classes=num_classes)
    if cutmix > 0:
        return v2.CutMix(alpha=cutmix, num_classes=num_classes)
    return None


class BatchRegularizers:
    """Random erasing, then label mixing, each only when switched on; labels become probabilities
    (B x classes) when a mixer is on and stay class indices otherwise."""

    def __init__(self, erasing: float, mixup: float, cutmix: float, cutmix_share: float, num_classes: int) -> None:
        self.erase = RandomErasing(erasing) if erasing > 0 else None
        self.mix = label_mixing(mixup, cutmix, cutmix_share, num_classes)

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if self.erase is not None:
            x = self.erase(x)
        if self.mix is not None:
            x, y = self.mix(x, y)
        return x, y
