"""Image files -> uint8 tensors (C x H x W), the same conversions on both data paths.

`read_image` is the streaming path's decoder: torchvision.io (libjpeg-turbo, libpng, libwebp; EXIF
orientation applied) at full resolution, with PIL as the fallback for what torchvision does not read
(BMP, TIFF, PPM/PGM, 16-bit and float images, palette images with transparency). `fit` is the
evaluation view: shorter side resized to `size` (or to `size / crop_fraction`, timm's crop_pct, for a
test view that keeps only the centre), centre crop. `decode_image` is the in-memory path's
decoder (PIL, straight to the small square), kept because PIL's draft mode makes thumbnails cheap.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
TORCHVISION_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif"}


def _pil_convert(im, channels: int):
    """CMYK/palette/RGBA -> RGB (alpha composited on black), 16-bit and float rescaled to 8 bits, then
    L or RGB (greyscale replicated when RGB is asked for)."""
    from PIL import Image, ImageOps

    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
        im = Image.fromarray(arr.astype(np.uint8), mode="L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), im)
    return im.convert("L" if channels == 1 else "RGB")


def _to_tensor(im, channels: int) -> Tensor:
    arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).reshape(arr.shape[0], arr.shape[1], channels).permute(2, 0, 1)


def pil_read(path: Path, channels: int) -> Tensor:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return _to_tensor(_pil_convert(im, channels), channels)


def pil_convert_bytes(data: bytes, channels: int) -> Tensor:
    """Encoded bytes PIL can read -> uint8 `channels` x H x W, with the conversions above."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return _to_tensor(_pil_convert(im, channels), channels)


def decode_bytes(data: bytes, channels: int) -> Tensor:
    """Encoded image bytes -> uint8 `channels` x H x W: torchvision.io, else PIL's conversions."""
    from torchvision.io import ImageReadMode, decode_image

    if not data:
        raise ValueError("empty file")
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    try:
        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode, apply_exif_orientation=True)
        image = image[0] if image.ndim == 4 else image  # an animated GIF/WebP: its first frame
        if image.dtype == torch.uint8 and image.shape[0] == channels:
            return image
    except RuntimeError:
        pass  # 16-bit PNG, CMYK JPEG, palette with transparency, BMP, TIFF...: PIL below
    return pil_convert_bytes(data, channels)


def read_image(path: str | Path, channels: int) -> Tensor:
    """The whole image as uint8 `channels` x H x W; raises on a file no decoder can read."""
    path = Path(path)
    if path.suffix.lower() in TORCHVISION_SUFFIXES:
        return decode_bytes(path.read_bytes(), channels)
    return pil_read(path, channels)


def fit(image: Tensor, size: int, crop_fraction: float = 1.0) -> Tensor:
    """Shorter side resized to `size / crop_fraction` (rounded down, as timm does; bicubic, antialiased),
    then the centre `size` x `size` square. 1.0 keeps the whole shorter side; MAE tests at 0.875
    (resize to 256, centre 224). Images or batches of them."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    image = F.resize(image, [math.floor(size / crop_fraction)], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return F.center_crop(image, [size, size])


def decode_image(path: Path, size: int, channels: int, crop_fraction: float = 1.0) -> Tensor:
    """Any PIL-readable image -> uint8 C x size x size, the view of `fit`, for the in-memory path: JPEGs
    are decoded at the smallest DCT scale that still covers the resized image (draft mode)."""
    from PIL import Image, ImageOps

    resized = math.floor(size / crop_fraction)
    with Image.open(path) as im:
        if im.format == "JPEG":
            im.draft(im.mode, (resized, resized))
        im.load()
        # bleed: the border left out on each side, so that the centre size / resized of the shorter side
        # remains, as in `fit` (not crop_fraction itself when size / crop_fraction is fractional)
        im = ImageOps.fit(_pil_convert(im, channels), (size, size), method=Image.Resampling.BICUBIC, bleed=(1 - size / resized) / 2)
        return _to_tensor(im, channels)
