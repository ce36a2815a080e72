"""Image sources in memory: a dataset becomes uint8 tensors (N x C x H x W) with optional labels.

Named datasets: `fashion-mnist` (IDX files), `cifar10`, `cifar100`, `stl10` (torchvision formats) and
`folder` (data/index.py: class sub-folders = labels, a flat folder of unlabelled images, a train/val
root or a file list). Folders too large for memory stream from their files instead (data/streaming.py).
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

from hybridssl.data.decode import decode_image, fit
from hybridssl.data.index import FileIndex, file_index, source_for
from hybridssl.data.shards import ShardIndex, shard_index
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
        return self.select(torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:limit].sort().values)

    def select(self, rows: Tensor) -> "ImageSet":
        labels = self.labels[rows] if self.labels is not None else None
        return ImageSet(self.images[rows], labels, self.classes, self.skipped)


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
    else:  # folders: measured on (up to 10k of) the training images, 256 at a time (a float copy of
        # all 10k at 224 px would be 4.8 GB: measured, BENCHMARKS.md, Real-scale data)
        sample = images.take(10_000).images
        total = torch.zeros(sample.shape[1], dtype=torch.float64)
        squares = torch.zeros_like(total)
        for i in range(0, len(sample), 256):
            x = sample[i : i + 256].double().div_(255)
            total += x.sum(dim=(0, 2, 3))
            squares += x.pow(2).sum(dim=(0, 2, 3))
        count = sample.shape[0] * sample.shape[2] * sample.shape[3]
        mean_t = total / count
        var = (squares - count * mean_t.pow(2)) / max(1, count - 1)  # unbiased, as Tensor.std
        mean = tuple(mean_t.tolist())
        std = tuple(var.clamp_min(0).sqrt().clamp_min(1e-3).tolist())
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


def folder_index(data_dir: Path | None, split: str) -> FileIndex:
    """The file index of `split` of a folder, train/val root or file list (data/index.py)."""
    if data_dir is None:
        raise DataError(f"dataset 'folder' needs --data-dir for the {split} split")
    return file_index(source_for(Path(data_dir), split))


def decode_index(index: FileIndex | ShardIndex, image_size: int, channels: int, strict: bool = False,
                 crop_fraction: float = 1.0) -> ImageSet:  # fmt: skip
    """Every sample of the index decoded into memory at image_size, the centre `crop_fraction` of its
    shorter side (decode.fit; threads: the decoders release the GIL). The same decoding semantics as
    the streamed path (data/decode.py): files over the pixel limit and unreadable files are skipped
    with their path, or stop the run under `strict`."""

    def safe_decode(i: int) -> Tensor | str:
        path = index.describe(i)
        try:
            if isinstance(index, FileIndex):
                return decode_image(index.path(i), image_size, channels, crop_fraction)
            return fit(index.read(i, channels), image_size, crop_fraction)
        except DataError:  # the dataset's fault (a damaged shard chunk, a decode setting), not this file's
            raise
        except Exception as exc:  # PIL raises many types for broken files
            return f"{path}: {type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        decoded = list(pool.map(safe_decode, range(len(index))))
    bad = [d for d in decoded if isinstance(d, str)]
    if bad and strict:
        raise DataError(f"{len(bad)} unreadable image(s), first: {bad[0]}")
    for message in bad:
        warnings.warn(f"skipping unreadable image {message}", stacklevel=2)
    if bad:
        warnings.warn(f"skipped {len(bad)} of {len(index)} images in {index.root}", stacklevel=2)
    keep = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
    if not keep:
        raise DataError(f"no readable images in {index.root} ({len(bad)} unreadable)")
    images = torch.stack([decoded[i] for i in keep])  # type: ignore[misc]
    labels = torch.from_numpy(index.labels[keep]) if index.labelled else None
    return ImageSet(images, labels, index.classes, skipped=bad)


def record_index(dataset: str, data_dir: Path | str | None, split: str) -> FileIndex | ShardIndex:
    """The index of `split` of a folder-like dataset (files or packed records), nothing decoded."""
    if dataset == "folder":
        return folder_index(Path(data_dir) if data_dir is not None else None, split)
    if data_dir is None:
        raise DataError(f"dataset 'shards' needs --data-dir (a folder or URL written by `hybridssl pack`) for the {split} split")
    return shard_index(data_dir, split)


def load_shards(split: str, data_dir: Path | None, image_size: int = 64, channels: int = 3, strict: bool = False,
                limit: int | None = None, seed: int = 0, **_) -> ImageSet:  # fmt: skip
    """A packed split (`hybridssl pack`) decoded into memory; `limit` picks a seeded subset first."""
    return decode_index(record_index("shards", data_dir, split).take(limit, seed), image_size, channels, strict)


def load_folder(
    split: str, data_dir: Path | None, image_size: int = 64, channels: int = 3, strict: bool = False,
    limit: int | None = None, seed: int = 0, **_,
) -> ImageSet:  # fmt: skip
    """A folder of class sub-folders (labelled) or of images (unlabelled), a train/val root or a file
    list, decoded into memory; `limit` picks a seeded subset before anything is decoded."""
    return decode_index(folder_index(data_dir, split).take(limit, seed), image_size, channels, strict)


# ----------------------------------------------------------------------------- registry

Loader = Callable[..., ImageSet]
DATASETS: dict[str, Loader] = {
    "fashion-mnist": load_fashion_mnist,
    "cifar10": lambda split, data_dir, **kw: load_cifar("cifar10", split, data_dir, **kw),
    "cifar100": lambda split, data_dir, **kw: load_cifar("cifar100", split, data_dir, **kw),
    "stl10": load_stl10,
    "folder": load_folder,
    "shards": load_shards,
}
STREAMED = ("folder", "shards")  # datasets of files or records, which may stream (data/training_set.py)
PRETRAIN_SPLIT = {"stl10": "train+unlabeled"}


def load_dataset(name: str, split: str, data_dir: Path | str | None = None, **options) -> ImageSet:
    """Load `split` ('train', 'test'; stl10 also 'unlabeled', 'train+unlabeled') of a named dataset."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    remote = "://" in str(data_dir)  # packed shards on object storage (litdata reads the URL)
    if data_dir is not None and not remote and not Path(data_dir).exists() and not options.get("download"):
        # a mistyped --data-dir must not fall back to another copy found elsewhere
        raise DataError(f"data_dir: {data_dir} does not exist")
    return DATASETS[name](split, (str(data_dir) if remote else Path(data_dir)) if data_dir else None, **options)
