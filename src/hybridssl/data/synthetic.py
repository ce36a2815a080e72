"""Photo-like JPEG folders for tests, benchmarks and the GPU check (no download needed).

Each image is a smooth colour gradient with soft blobs and sensor-like noise, 300-500 px on each side
(so crops and resizes do real work), JPEG-encoded like a camera photo. The class decides the hue of
the blobs and where they gather, so a class is learnable but not trivial. Layouts: "train_val" (an
ImageNet-style root with train/ and val/ class folders), "classes" (class folders) or "flat".
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

Layout = Literal["train_val", "classes", "flat"]


def photo(rng: np.random.Generator, label: int, num_classes: int, size: tuple[int, int]) -> np.ndarray:
    """One H x W x 3 uint8 photo-like image of class `label`: drawn at a quarter of the size, enlarged
    (smooth, like optics), then given full-resolution noise."""
    from PIL import Image

    full = size
    h, w = max(8, size[0] // 4), max(8, size[1] // 4)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    top, bottom = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    image = top + (bottom - top) * (y / h)[..., None]
    hue = 2 * np.pi * label / num_classes
    colour = 127 + 100 * np.array([np.cos(hue), np.cos(hue + 2.1), np.cos(hue + 4.2)])
    centre = np.array([0.3 + 0.4 * (label % 2), 0.3 + 0.4 * ((label // 2) % 2)])
    for _ in range(rng.integers(3, 7)):
        cy, cx = (centre + rng.normal(0, 0.15, 2)) * (h, w)
        radius = rng.uniform(0.06, 0.2) * min(h, w)
        blob = np.exp(-(((y - cy) ** 2 + (x - cx) ** 2) / (2 * radius**2)))[..., None]
        image = image * (1 - blob) + (colour + rng.normal(0, 20, 3)) * blob
    small = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    large = np.asarray(small.resize((full[1], full[0]), Image.Resampling.BICUBIC), dtype=np.int16)
    noise = rng.integers(-10, 11, large.shape, dtype=np.int16)
    return np.clip(large + noise, 0, 255).astype(np.uint8)


def write_photo_folder(root: str | Path, num_images: int, num_classes: int = 4, layout: Layout = "train_val",
                       val_fraction: float = 0.2, sizes: tuple[int, int] = (300, 500), seed: int = 0,
                       quality: int = 90) -> Path:  # fmt: skip
    """Writes `num_images` JPEGs under `root` in `layout`; returns root."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    for i in range(num_images):
        label = i % num_classes
        if layout == "flat":
            folder = root
        else:
            split = "val" if layout == "train_val" and rng.random() < val_fraction else "train"
            folder = (root / split if layout == "train_val" else root) / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        size = (int(rng.integers(sizes[0], sizes[1] + 1)), int(rng.integers(sizes[0], sizes[1] + 1)))
        Image.fromarray(photo(rng, label, num_classes, size)).save(folder / f"img{i:07d}.jpg", quality=quality)
    return root
