"""`hybridssl pack`: any supported dataset -> litdata shards with labels, sample ids and splits (data/shards.py).

Sources: a folder, a train/ + val/ root, a file list, or a named dataset (fashion-mnist, cifar10, ...).
Splits: train, and test where the source has one (a root's val/, a named dataset's test split).
Progress: one tqdm bar over the images of every split (litdata's own logs, advert and bars are off).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from hybridssl.data.index import file_index, has_split_layout, labels_in, source_for
from hybridssl.data.shards import ArraySource, FileSource, keep_readable, split_location, write_meta, write_split
from hybridssl.data.sources import DATASETS, PRETRAIN_SPLIT, load_dataset
from hybridssl.errors import DataError


def file_splits(path: Path) -> dict[str, FileSource]:
    train = file_index(source_for(path, "train"))
    splits = {"train": FileSource(train)}
    if has_split_layout(path):
        test = file_index(source_for(path, "test"))
        test = replace(test, labels=labels_in(test.labels, test.classes, train.classes, f"{path}'s test split"), classes=train.classes)
        splits["test"] = FileSource(test)
    return splits


def array_splits(name: str, data_dir: Path | None, download: bool) -> tuple[dict[str, ArraySource], list[str] | None]:
    splits, classes = {}, None
    for split, stored in (("train", PRETRAIN_SPLIT.get(name, "train")), ("test", "test")):
        images = load_dataset(name, stored, data_dir, download=download)
        labels = images.labels.numpy() if images.labels is not None else np.full(len(images), -1, dtype=np.int64)
        splits[split], classes = ArraySource(images.images, labels), images.classes
    return splits, classes


def pack(source: str, output: str | Path, data_dir: Path | None = None, download: bool = False,
         chunk_bytes: str = "64MB") -> dict[str, Any]:  # fmt: skip
    """Packs `source` (a path, or a dataset name) into `output`; returns what meta.json records."""
    start = time.perf_counter()
    left_out: dict[str, list[str]] = {}
    if Path(source).exists():
        # only files that decode are stored; each one left out is named (shards.keep_readable)
        splits, left_out = keep_readable(file_splits(Path(source)))
        classes = splits["train"].index.classes
    elif source in DATASETS and source not in ("folder", "shards"):
        splits, classes = array_splits(source, data_dir, download)
    else:
        raise DataError(f"source: {source} is neither a folder, a file list nor one of {', '.join(DATASETS)}")
    from tqdm.auto import tqdm

    with tqdm(total=sum(len(records) for records in splits.values()), desc="packing", unit="image", leave=False) as bar:
        for split, records in splits.items():
            bar.set_description(f"packing {split}")
            write_split(records, split_location(output, split), chunk_bytes, progress=bar)
    meta = {"source": str(source), "classes": classes, "splits": {k: len(v) for k, v in splits.items()},
            "seconds": round(time.perf_counter() - start, 1), "left_out": left_out}  # fmt: skip
    write_meta(output, meta)
    return meta
