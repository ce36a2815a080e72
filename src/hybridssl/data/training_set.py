"""The pretraining set of a run and which data path reads it: in memory or streamed from files.

Named datasets (Fashion-MNIST, CIFAR, STL-10) come as arrays and stay in memory. A folder (or a packed
dataset, `--dataset shards`) goes to memory
when its decoded size (files x channels x image_size^2 bytes) is at most MEMORY_BUDGET_BYTES, where one
decode up front makes every epoch cheapest; larger folders stream through DataLoader workers, which
start at once and keep memory flat in the number of files. `loader` ("memory" / "stream") overrides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Union

from hybridssl.data.sources import PRETRAIN_SPLIT, STREAMED, DataInfo, ImageSet, data_info, decode_index
from hybridssl.data.sources import load_dataset, record_index
from hybridssl.data.index import FileIndex
from hybridssl.data.shards import ShardIndex
from hybridssl.data.streaming import StreamingSet, default_workers
from hybridssl.errors import ConfigError
from hybridssl.nn.vit import MAX_IMAGE_SIDE, default_image_size

MEMORY_BUDGET_BYTES = 256 * 2**20
SIZE_SAMPLES = 32  # images decoded to choose a folder's training resolution

TrainingData = Union[ImageSet, StreamingSet]
LoaderChoice = Literal["auto", "memory", "stream"]


def decoded_bytes(num_files: int, image_size: int, channels: int) -> int:
    return num_files * channels * image_size * image_size


def training_data(
    dataset: str,
    data_dir: Path | None,
    *,
    image_size: int | None,
    channels: int,
    strict: bool = False,
    loader: LoaderChoice = "auto",
    limit: int | None = None,
    seed: int = 0,
    num_workers: int | None = None,
    download: bool = False,
) -> TrainingData:
    """The pretraining split, limited to a seeded subset of `limit` images before anything is decoded.
    A folder or pack without `image_size` trains at its images' typical size (nn.vit.default_image_size)."""
    if dataset not in STREAMED:
        if loader == "stream":
            raise ConfigError(f"loader: {dataset} is loaded into memory; `stream` applies to folder and shards datasets")
        split = PRETRAIN_SPLIT.get(dataset, "train")
        return load_dataset(dataset, split, data_dir, download=download).take(limit, seed=seed)
    index = record_index(dataset, data_dir, "train").take(limit, seed)
    image_size = image_size or default_image_size(typical_side(index))
    return stored_or_streamed(dataset, index, image_size, channels, strict, loader, num_workers)


def typical_side(index: FileIndex | ShardIndex, samples: int = SIZE_SAMPLES) -> int:
    """The median shorter side of a seeded sample of the images (decoded: every format has its size,
    not every header reader knows every format). Unreadable samples are skipped here: the loader that
    follows names every unreadable file and fails when none is readable."""
    sides = []
    for i in range(len(sample := index.take(samples, seed=0))):
        try:
            sides.append(min(sample.read(i, 1).shape[-2:]))
        except Exception:  # decoders raise many types for broken files
            continue
    return sorted(sides)[len(sides) // 2] if sides else MAX_IMAGE_SIDE


def stored_or_streamed(dataset: str, index: FileIndex | ShardIndex, image_size: int, channels: int, strict: bool = False,
                       loader: LoaderChoice = "auto", num_workers: int | None = None, crop_fraction: float = 1.0) -> TrainingData:  # fmt: skip
    """The one rule for both training and evaluation: decode into memory up to the budget, else stream.
    `crop_fraction`: the view images are fitted to (decode.fit), below 1 for an evaluation's test split."""
    stream = loader == "stream" or (loader == "auto" and decoded_bytes(len(index), image_size, channels) > MEMORY_BUDGET_BYTES)
    if stream:
        workers = default_workers() if num_workers is None else num_workers
        return StreamingSet(dataset, index, image_size, channels, strict, workers, crop_fraction)
    return decode_index(index, image_size, channels, strict, crop_fraction)


def training_info(dataset: str, data: TrainingData) -> DataInfo:
    """What the model needs to know about the images (statistics: measured on folders)."""
    return data.info if isinstance(data, StreamingSet) else data_info(dataset, data)
