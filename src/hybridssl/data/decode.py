"""Image files -> uint8 tensors (C x H x W), one decoding semantics for every data path.

Who decodes what: JPEGs (found by their first bytes, not their name) go to torchvision.io
(libjpeg-turbo, the fast common case); every other format (PNG, WebP, GIF, BMP, TIFF, PPM/PGM) goes to
PIL. torchvision's PNG decoder crashes the whole process (segfault) on corrupt image data, even with
valid chunk checksums (so PIL's `verify()` is no guard), while PIL raises an error: a damaged file must
be skipped with its path, never end a run. torchvision's JPEG decoder raises on damaged data.

The conversions, the same on the streamed path (`read_image` + `fit`), the in-memory path
(`decode_image`) and packed shards (`decode_bytes`):
- EXIF orientation applied.
- Transparency (an alpha channel, a palette's or a colour key's transparency): composited on black,
  i.e. each colour times its opacity (premultiplied alpha). Black rather than white because a fully
  transparent pixel then carries no colour at all, whatever colour the file stored under it.
- 16-bit and 32-bit integer images: scaled by bit depth, x / 65535 x 255 (32-bit values clipped to
  0..65535), never per image, so absolute intensities keep their meaning across images; 32-bit float
  images: clipped to [0, 1], times 255 (NaN -> 0). `HYBRIDSSL_INTENSITY_WINDOW=lo,hi` (in the file's
  own values, e.g. `0,4095` for 12-bit scanners or a CT window) maps [lo, hi] to 0..255 instead,
  clipped, for every such single-channel image of the dataset. 16-bit colour PNGs are reduced by PIL
  to their high byte (x / 256, within one level of x / 65535 x 255). 8-bit images are never windowed.
- Greyscale from colour: ITU-R 601 luma, PIL's integer formula (JPEGs too, after torchvision's RGB).
- A size limit read from the header before anything is decoded: an image of more than
  `HYBRIDSSL_MAX_IMAGE_PIXELS` pixels (default 178,956,970, the size PIL itself refuses; 0 = none) is
  an error naming its size, so the caller skips it with its path. It replaces PIL's own check
  (`Image.MAX_IMAGE_PIXELS` is set to None): one limit, one message, for torchvision's JPEGs too.

`fit` is the evaluation view: shorter side resized to `size` (or to `size / crop_fraction`, timm's
crop_pct, for a test view that keeps only the centre), centre crop. `decode_image` is the in-memory
path's decoder (PIL, straight to the small square), kept because PIL's draft mode makes thumbnails cheap.
"""

from __future__ import annotations

import io
import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor

from hybridssl.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
JPEG_MAGIC = b"\xff\xd8\xff"
MAX_PIXELS_VARIABLE = "HYBRIDSSL_MAX_IMAGE_PIXELS"
WINDOW_VARIABLE = "HYBRIDSSL_INTENSITY_WINDOW"
DEFAULT_MAX_PIXELS = 2 * 89_478_485  # PIL's refusal threshold (2 x Image.MAX_IMAGE_PIXELS): nothing PIL read is refused
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers (not DHT, JPG, DAC)


class ImageTooLarge(ValueError):
    """An image whose header declares more pixels than the limit: skipped like any unreadable file."""


_import_lock = threading.Lock()
_tv: SimpleNamespace | None = None


def _torchvision() -> SimpleNamespace:
    """torchvision's JPEG decoder and resize, imported once under a lock. The first decodes of a run
    may come from several threads at once (sources.decode_index), and concurrent first imports of
    torchvision's circular package raise ImportError ("partially initialized module"), which would read
    as unreadable images."""
    global _tv
    if _tv is None:
        with _import_lock:
            if _tv is None:
                from torchvision.io import ImageReadMode, decode_jpeg
                from torchvision.transforms.v2 import InterpolationMode
                from torchvision.transforms.v2 import functional as F

                _tv = SimpleNamespace(ImageReadMode=ImageReadMode, decode_jpeg=decode_jpeg, InterpolationMode=InterpolationMode, F=F)
    return _tv


# ----------------------------------------------------------------------------- settings


@lru_cache(maxsize=8)
def _parse_max_pixels(raw: str | None) -> int | None:
    if raw is None or not raw.strip():
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw.replace("_", "").replace(",", ""))
    except ValueError:
        value = -1
    if value < 0:
        raise DataError(f"{MAX_PIXELS_VARIABLE}={raw!r}: give a number of pixels (0 = no limit)")
    return value or None


def max_pixels() -> int | None:
    """The pixel limit (None: none), from the environment at each call: workers inherit it."""
    return _parse_max_pixels(os.environ.get(MAX_PIXELS_VARIABLE))


@lru_cache(maxsize=8)
def _parse_window(raw: str | None) -> tuple[float, float] | None:
    if raw is None or not raw.strip():
        return None
    try:
        lo, hi = (float(x) for x in raw.split(","))
    except ValueError:
        lo, hi = math.nan, math.nan
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise DataError(f"{WINDOW_VARIABLE}={raw!r}: give lo,hi with lo < hi, e.g. 0,4095")
    return lo, hi


def intensity_window() -> tuple[float, float] | None:
    """The fixed window of high-bit-depth images (None: scale by bit depth)."""
    return _parse_window(os.environ.get(WINDOW_VARIABLE))


def check_size(width: int, height: int) -> None:
    """Raises ImageTooLarge for an image over the pixel limit; called on the header, before decoding."""
    limit = max_pixels()
    if limit is not None and width * height > limit:
        raise ImageTooLarge(f"{width} x {height} = {width * height:,} pixels, over the limit of {limit:,} "
                            f"({MAX_PIXELS_VARIABLE}); not decoded")  # fmt: skip


def jpeg_header(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) from a JPEG's frame header, walking the marker segments before it
    (no decoding); None when there is none before the scan data (a damaged file: the decoder decides)."""
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # segments without a length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            return None
        if marker in _SOF_MARKERS:
            if pos + 10 > end:
                return None
            height, width = (data[pos + 5] << 8) | data[pos + 6], (data[pos + 7] << 8) | data[pos + 8]
            return width, height, data[pos + 9]
        pos += 2 + ((data[pos + 2] << 8) | data[pos + 3])
    return None


# ----------------------------------------------------------------------------- conversions


@contextmanager
def _opened(source: str | Path | IO[bytes]) -> Iterator[Any]:
    """PIL's lazy open (header only) with the size limit checked before any pixel is decoded."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # check_size replaces PIL's check (module docstring)
    with Image.open(source) as im:
        check_size(*im.size)
        yield im


def _to_8bit(im: Any) -> Any:
    """A 16/32-bit integer or float single-channel image -> L, by bit depth or the fixed window."""
    from PIL import Image

    lo, hi = intensity_window() or ((0.0, 1.0) if im.mode == "F" else (0.0, 65535.0))
    arr = np.asarray(im, dtype=np.float32).copy()
    arr -= np.float32(lo)
    arr *= np.float32(255 / (hi - lo))
    np.nan_to_num(arr, copy=False, nan=0.0)
    np.clip(arr, 0, 255, out=arr)
    return Image.fromarray(np.rint(arr).astype(np.uint8))


def _pil_convert(im: Any, channels: int) -> Any:
    """The conversions of the module docstring: EXIF orientation, bit depth, transparency on black,
    then L or RGB (greyscale replicated when RGB is asked for)."""
    from PIL import Image, ImageOps

    im = ImageOps.exif_transpose(im)
    if im.mode.startswith("I") or im.mode == "F":
        im = _to_8bit(im)
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        im = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), im)
    return im.convert("L" if channels == 1 else "RGB")


def _to_tensor(im: Any, channels: int) -> Tensor:
    arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).reshape(arr.shape[0], arr.shape[1], channels).permute(2, 0, 1)


def pil_read(path: Path, channels: int) -> Tensor:
    """A file PIL reads -> uint8 `channels` x H x W, with the conversions above."""
    with _opened(path) as im:
        im.load()
        return _to_tensor(_pil_convert(im, channels), channels)


def pil_convert_bytes(data: bytes, channels: int) -> Tensor:
    """Encoded bytes PIL can read -> uint8 `channels` x H x W, with the conversions above."""
    with _opened(io.BytesIO(data)) as im:
        im.load()
        return _to_tensor(_pil_convert(im, channels), channels)


def luma(rgb: Tensor) -> Tensor:
    """uint8 3 x H x W -> 1 x H x W with PIL's L = (19595 R + 38470 G + 7471 B + 2^15) >> 16, so a JPEG
    turned grey by torchvision equals one turned grey by PIL (libjpeg's own grey output is its Y
    channel, a few levels away)."""
    r, g, b = rgb.to(torch.int32).unbind(0)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.uint8).unsqueeze(0)


def _decode_jpeg(data: bytes, channels: int) -> Tensor:
    """torchvision's libjpeg-turbo, after the size check on the frame header; what it refuses goes to PIL."""
    tv = _torchvision()
    header = jpeg_header(data)
    if header is not None:
        check_size(header[0], header[1])
    grey_file = header is not None and header[2] == 1
    mode = tv.ImageReadMode.GRAY if channels == 1 and grey_file else tv.ImageReadMode.RGB
    try:
        image = tv.decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode, apply_exif_orientation=True)
    except RuntimeError:  # truncated, 12-bit, ...: PIL gives the same pixels or the error
        return pil_convert_bytes(data, channels)
    return luma(image) if channels == 1 and image.shape[0] == 3 else image


def decode_bytes(data: bytes, channels: int) -> Tensor:
    """Encoded image bytes -> uint8 `channels` x H x W: JPEGs by torchvision, the rest by PIL."""
    if not data:
        raise ValueError("empty file")
    if data[:3] == JPEG_MAGIC:
        return _decode_jpeg(data, channels)
    return pil_convert_bytes(data, channels)


def read_image(path: str | Path, channels: int) -> Tensor:
    """The whole image as uint8 `channels` x H x W; raises on a file no decoder can read."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(len(JPEG_MAGIC))
        if not head:
            raise ValueError("empty file")
        if head == JPEG_MAGIC:
            f.seek(0)
            return _decode_jpeg(f.read(), channels)
    return pil_read(path, channels)


def verify_bytes(data: bytes) -> None:
    """Raises when the bytes would not decode, at a fraction of a decode's cost for JPEGs (PIL's draft
    mode reads all the data at 1/8 scale, so truncation shows); other formats are decoded and
    converted whole, as training will, the only way to find damaged PNG data. `hybridssl pack` stores
    only files that pass."""
    if not data:
        raise ValueError("empty file")
    with _opened(io.BytesIO(data)) as im:
        if im.format == "JPEG":
            im.draft(im.mode, (1, 1))
            im.load()
        else:
            im.load()
            _pil_convert(im, 3)


def fit(image: Tensor, size: int, crop_fraction: float = 1.0) -> Tensor:
    """Shorter side resized to `size / crop_fraction` (rounded down, as timm does; bicubic, antialiased),
    then the centre `size` x `size` square. 1.0 keeps the whole shorter side; MAE tests at 0.875
    (resize to 256, centre 224). Images or batches of them."""
    tv = _torchvision()
    image = tv.F.resize(image, [math.floor(size / crop_fraction)], interpolation=tv.InterpolationMode.BICUBIC, antialias=True)
    return tv.F.center_crop(image, [size, size])


def decode_image(path: Path, size: int, channels: int, crop_fraction: float = 1.0) -> Tensor:
    """Any PIL-readable image -> uint8 C x size x size, the view of `fit`, for the in-memory path: JPEGs
    are decoded at the smallest DCT scale that still covers the resized image (draft mode)."""
    from PIL import Image, ImageOps

    resized = math.floor(size / crop_fraction)
    with _opened(path) as im:
        if im.format == "JPEG":
            im.draft(im.mode, (resized, resized))
        im.load()
        # bleed: the border left out on each side, so that the centre size / resized of the shorter side
        # remains, as in `fit` (not crop_fraction itself when size / crop_fraction is fractional)
        im = ImageOps.fit(_pil_convert(im, channels), (size, size), method=Image.Resampling.BICUBIC, bleed=(1 - size / resized) / 2)
        return _to_tensor(im, channels)
