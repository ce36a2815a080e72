"""Image sources: every dataset becomes uint8 tensors in memory (N x C x H x W) with optional labels.

Named datasets: `fashion-mnist` (IDX files), `cifar10`, `cifar100`, `stl10` (torchvision formats) and
`folder` (class sub-folders = labels, or a flat folder of unlabeled images).
"""

from __future__ import annotations

import gzip
import os
import struct
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from hybridssl.errors import DataError


@dataclass
class ImageSet:
    images: Tensor  # uint8, N x C x H x W
    labels: Tensor | None  # int64, N
    classes: list[str] | None = None
    skipped: list[str] = field(default_factory=list)  # files that could not be decoded

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int | None:
        if self.classes is not None:
            return len(self.classes)
        return int(self.labels.max()) + 1 if self.labels is not None else None

    def take(self, limit: int | None, seed: int = 0) -> "ImageSet":
        """A seeded random subset of `limit` images (stratified by nothing: uniform)."""
        if limit is None or limit >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
        labels = self.labels[idx] if self.labels is not None else None
        return ImageSet(self.images[idx], labels, self.classes, self.skipped)


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about its images; stored in every checkpoint."""

    dataset: str
    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int | None = None
    num_images: int | None = None  # size of the pretraining set (a MoCo queue must not exceed it)


# Per-channel statistics of the training splits (pixel values scaled to [0, 1]).
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
}


def data_info(name: str, images: ImageSet) -> DataInfo:
    if name in STATS:
        mean, std = STATS[name]
    else:  # folders: measured on (up to 10k of) the training images
        sample = images.take(10_000).images.float().div_(255)
        mean = tuple(sample.mean(dim=(0, 2, 3)).tolist())
        std = tuple(sample.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())
    return DataInfo(name, images.images.shape[-1], images.images.shape[1], mean, std, images.num_classes, len(images))


# ----------------------------------------------------------------------------- Fashion-MNIST

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_FILES = {  # file -> md5, as published with the dataset
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hybridssl"


def read_idx(path: Path) -> np.ndarray:
    """Reads an IDX file (optionally gzipped): unsigned-byte arrays of any rank."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise DataError(f"{path}: truncated IDX file ({array.size} of {int(np.prod(shape))} values)")
    return array.reshape(shape)


def fashion_mnist_candidates(data_dir: Path | None) -> list[Path]:
    """Where Fashion-MNIST is looked for, in order."""
    roots = [data_dir] if data_dir else []
    if os.environ.get("HYBRIDSSL_DATA"):
        roots.append(Path(os.environ["HYBRIDSSL_DATA"]))
    roots += [DEBIAN_FASHION_MNIST, CACHE_DIR / "fashion-mnist"]
    return [d for root in roots for d in (root, root / "fashion-mnist", root / "FashionMNIST" / "raw")]


def _find_fashion_mnist(data_dir: Path | None, download: bool) -> Path:
    candidates = fashion_mnist_candidates(data_dir)
    for folder in candidates:
        if all((folder / name).is_file() for name in FASHION_MNIST_FILES):
            return folder
    if download:
        from torchvision.datasets.utils import download_url

        target = (data_dir or CACHE_DIR) / "fashion-mnist"
        for name, md5 in FASHION_MNIST_FILES.items():
            try:
                download_url(FASHION_MNIST_URL + name, str(target), name, md5)
            except Exception as exc:  # network errors come in many types
                raise DataError(f"downloading Fashion-MNIST to {target} failed: {exc}") from None
        return target
    looked = ", ".join(dict.fromkeys(str(c) for c in candidates))
    raise DataError(
        "Fashion-MNIST not found. Looked for train-images-idx3-ubyte.gz etc. in: "
        f"{looked}. Fix: pass --data-dir DIR, set HYBRIDSSL_DATA, `apt-get install dataset-fashion-mnist`, "
        "or add --download when online."
    )


def load_fashion_mnist(split: str, data_dir: Path | None, download: bool = False, **_) -> ImageSet:
    folder = _find_fashion_mnist(data_dir, download)
    prefix = {"train": "train", "test": "t10k"}[split]
    images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
    if len(images) != len(labels):
        raise DataError(f"{folder}: {len(images)} images but {len(labels)} labels in the {split} split")
    tensor = torch.from_numpy(images.copy()).unsqueeze(1)
    return ImageSet(tensor, torch.from_numpy(labels.astype(np.int64)), FASHION_MNIST_CLASSES)


# ----------------------------------------------------------------------------- torchvision datasets


def _torchvision_root(name: str, data_dir: Path | None) -> Path:
    return data_dir or Path(os.environ.get("HYBRIDSSL_DATA", CACHE_DIR)) / name


def _trust_existing_files(cls: type) -> type:
    """torchvision re-hashes every file at each load; this subclass only checks that the files exist.
    The archive's md5 is still verified when torchvision downloads it, and tests can use small fixtures."""
    attrs = {name: [[f, None] for f, *_ in getattr(cls, name)] for name in ("train_list", "test_list")}
    if hasattr(cls, "meta"):
        attrs["meta"] = {**cls.meta, "md5": None}
    return type(cls.__name__, (cls,), attrs)


def load_cifar(name: str, split: str, data_dir: Path | None, download: bool = False, **_) -> ImageSet:
    from torchvision import datasets

    cls = _trust_existing_files(datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100)
    root = _torchvision_root(name, data_dir)
    try:
        ds = cls(str(root), train=split == "train", download=download)
    except RuntimeError as exc:
        raise DataError(f"{name} not found under {root} ({exc}); pass --data-dir DIR or --download") from None
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images, torch.as_tensor(ds.targets, dtype=torch.int64), list(ds.classes))


def load_stl10(split: str, data_dir: Path | None, download: bool = False, **_) -> ImageSet:
    from torchvision import datasets

    STL10 = _trust_existing_files(datasets.STL10)
    root = _torchvision_root("stl10", data_dir)
    try:
        ds = STL10(str(root), split=split, download=download)
    except RuntimeError as exc:
        raise DataError(f"stl10 not found under {root} ({exc}); pass --data-dir DIR or --download") from None
    labels = torch.from_numpy(ds.labels.astype(np.int64))
    return ImageSet(torch.from_numpy(ds.data), None if (labels < 0).all() else labels, list(ds.classes))


# ----------------------------------------------------------------------------- image folders

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def decode_image(path: Path, size: int, channels: int) -> Tensor:
    """Any PIL-readable image -> uint8 C x size x size (shorter side resized, centre crop).

    Unusual modes are converted: CMYK/palette/RGBA -> RGB (alpha composited on black), 16-bit and
    float images rescaled to 8 bits, greyscale replicated to 3 channels when RGB is asked for.
    """
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(im, dtype=np.float64)
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
            im = Image.fromarray(arr.astype(np.uint8), mode="L")
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            im = Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), im)
        im = im.convert("L" if channels == 1 else "RGB")
        im = ImageOps.fit(im, (size, size), method=Image.Resampling.BICUBIC)
        arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).reshape(size, size, channels).permute(2, 0, 1)


def _list_images(folder: Path) -> tuple[list[Path], list[int] | None, list[str] | None]:
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist")
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    def images_in(d: Path) -> list[Path]:
        return sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if subdirs:
        classes = [d.name for d in subdirs]
        pairs = [(p, label) for label, d in enumerate(subdirs) for p in images_in(d)]
        paths, labels = [p for p, _ in pairs], [label for _, label in pairs]
    else:
        paths, labels, classes = images_in(folder), None, None
    if not paths:
        raise DataError(f"image folder {folder} contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths, labels, classes


def load_folder(
    split: str, data_dir: Path | None, image_size: int = 64, channels: int = 3, strict: bool = False, **_
) -> ImageSet:
    """`data_dir` holds class sub-folders (labelled) or images directly (unlabelled)."""
    if data_dir is None:
        raise DataError(f"dataset 'folder' needs --data-dir for the {split} split")
    paths, labels, classes = _list_images(Path(data_dir))

    def safe_decode(path: Path) -> Tensor | str:
        try:
            return decode_image(path, image_size, channels)
        except Exception as exc:  # PIL raises many types for broken files
            return f"{path}: {type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        decoded = list(pool.map(safe_decode, paths))
    bad = [d for d in decoded if isinstance(d, str)]
    if bad and strict:
        raise DataError(f"{len(bad)} unreadable image(s), first: {bad[0]}")
    for message in bad:
        warnings.warn(f"skipping unreadable image {message}", stacklevel=2)
    if bad:
        warnings.warn(f"skipped {len(bad)} of {len(paths)} images in {data_dir}", stacklevel=2)
    keep = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
    if not keep:
        raise DataError(f"no readable images in {data_dir} ({len(bad)} unreadable)")
    images = torch.stack([decoded[i] for i in keep])  # type: ignore[misc]
    label_tensor = torch.tensor([labels[i] for i in keep], dtype=torch.int64) if labels is not None else None
    return ImageSet(images, label_tensor, classes, skipped=bad)


# ----------------------------------------------------------------------------- registry

Loader = Callable[..., ImageSet]
DATASETS: dict[str, Loader] = {
    "fashion-mnist": load_fashion_mnist,
    "cifar10": lambda split, data_dir, **kw: load_cifar("cifar10", split, data_dir, **kw),
    "cifar100": lambda split, data_dir, **kw: load_cifar("cifar100", split, data_dir, **kw),
    "stl10": load_stl10,
    "folder": load_folder,
}
PRETRAIN_SPLIT = {"stl10": "train+unlabeled"}


def load_dataset(name: str, split: str, data_dir: Path | str | None = None, **options) -> ImageSet:
    """Load `split` ('train', 'test'; stl10 also 'unlabeled', 'train+unlabeled') of a named dataset."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if data_dir is not None and not Path(data_dir).exists() and not options.get("download"):
        # a mistyped --data-dir must not fall back to another copy found elsewhere
        raise DataError(f"data_dir: {data_dir} does not exist")
    return DATASETS[name](split, Path(data_dir) if data_dir else None, **options)
