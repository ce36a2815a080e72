"""RandAugment per sample with timm's policies (the MAE and CMAE fine-tunes use "rand-m9-mstd0.5-inc1").

timm's policy code is the one the papers ran, so it is used as is rather than re-implemented on
tensors. Its ops work on PIL images and draw from Python's and NumPy's process-wide generators; each
call here seeds both from the caller's seed and puts them back afterwards, so the result depends on
(image, policy, seed) only, whichever process (a DataLoader worker, the training loop) runs it, and a
resumed run repeats it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor


def _posterize(image: Any, bits: int, **kwargs: Any) -> Any:
    """timm's posterize, with 0 bits kept as a black image: the increasing-strength policies reach 0 bits
    at the top magnitude (mstd noise clipped at 10), which Pillow < 13 turned black (the papers' runs)
    and Pillow 13 refuses with a ValueError."""
    from PIL import Image
    from timm.data.auto_augment import posterize

    return Image.new(image.mode, image.size) if bits <= 0 else posterize(image, bits, **kwargs)


def _transform(policy: str, fill: tuple[int, ...]) -> Any:
    from PIL import Image
    from timm.data.auto_augment import rand_augment_transform

    # geometric ops fill uncovered pixels with the data's mean colour (timm's `img_mean`) and resample
    # bicubic, as the MAE / CMAE fine-tunes ask timm for (left to timm, each op picks bilinear or bicubic)
    hparams = {"img_mean": fill[0] if len(fill) == 1 else fill, "interpolation": Image.BICUBIC}
    transform = rand_augment_transform(policy, hparams)
    for op in transform.ops:
        if op.name.startswith("Posterize"):
            op.aug_fn = _posterize  # this policy's own ops; timm's tables stay as they are
    return transform


_cached_transform = lru_cache(maxsize=8)(_transform)


def check_policy(policy: str) -> str:
    """`policy` if timm can build it; a ValueError that shows a valid one otherwise."""
    try:
        _transform(policy, (128,))
    except Exception as exc:  # timm asserts on unknown sections and fails in int()/float() on bad numbers
        detail = f" ({exc})" if str(exc) else ""
        raise ValueError(f"{policy!r} is not a timm RandAugment policy such as 'rand-m9-mstd0.5-inc1'{detail}") from None
    return policy


@dataclass(frozen=True)
class RandAugment:
    """A timm RandAugment policy and the fill colour (0-255 per channel) of its geometric ops."""

    policy: str
    fill: tuple[int, ...]

    def __call__(self, image: Tensor, seed: int) -> Tensor:
        """uint8 C x H x W (C = 1 or 3) -> the same shape and dtype, drawn from `seed`."""
        from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image

        python_state, numpy_state = random.getstate(), np.random.get_state()
        try:
            random.seed(seed)
            np.random.seed(seed % 2**32)
            return pil_to_tensor(_cached_transform(self.policy, self.fill)(to_pil_image(image)))
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)

    def batch(self, images: Tensor) -> Tensor:
        """Float B x C x H x W in [0, 1] on any device -> the same, each image with its own draw (seeds
        from torch's global generator: the one a resumable fine-tune saves)."""
        seeds = torch.randint(2**31, (len(images),)).tolist()
        pixels = images.mul(255).round_().to("cpu", torch.uint8)
        out = torch.stack([self(image, seed) for image, seed in zip(pixels, seeds, strict=True)])
        return out.to(images.device).float().div_(255)


def mean_fill(mean: tuple[float, ...] | list[float]) -> tuple[int, ...]:
    """Per-channel mean in [0, 1] -> the 0-255 fill colour."""
    return tuple(round(255 * m) for m in mean)
