"""Sharded datasets: `hybridssl pack` writes any supported dataset as litdata chunks; training and
evaluation read them by sample index, like files.

Why litdata (Lightning's `optimize` + `StreamingDataset`): its chunks are read by sample index, locally
or from object storage (s3://, gs://, ... with a local cache), so the streaming path keeps its design
unchanged: the order comes from (seed, epoch), each sample's crops from (seed, epoch, index), each rank
reads its own part of the global batch, and a resumed run sees exactly the samples and crops of an
uninterrupted one. Tar shards (WebDataset) are read front to back with a shuffle buffer, which gives
up that exact-resume promise. Measurements: BENCHMARKS.md.

Layout of a pack: OUT/meta.json (format, classes, source, images per split) and one litdata dataset
per split (OUT/train, OUT/test), each record {"index", "label", "image"}: the file's own bytes
(JPEG/PNG/...: no re-encoding) or a lossless PNG for datasets that come as arrays. OUT/<split>/labels.npy
holds every label in index order, so labels are known without reading any image. Packing runs in one
litdata worker so that record i of a split is sample i of the source (several workers interleave).
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from hybridssl.data.decode import decode_bytes
from hybridssl.data.index import LabelledSamples
from hybridssl.errors import DataError

FORMAT = 1
SPLIT_NAMES = {"train": "train", "unlabeled": "train", "train+unlabeled": "train", "test": "test"}


def is_remote(location: str | Path) -> bool:
    return "://" in str(location)


def split_location(root: str | Path, split: str) -> str:
    name = SPLIT_NAMES.get(split, split)
    return f"{str(root).rstrip('/')}/{name}" if is_remote(root) else str(Path(root) / name)


@dataclass
class ShardIndex(LabelledSamples):
    """The samples of one packed split: read by index through litdata (opened lazily in each process)."""

    root: str
    rows: np.ndarray  # positions in the packed split
    labels: np.ndarray  # int64, -1 = unknown
    classes: list[str] | None
    _dataset: Any = field(default=None, repr=False, compare=False)
    # litdata's reader keeps the current chunk's map and offsets in its own fields: one thread at a time
    # (decoding into memory reads from a thread pool; the image decode itself runs unlocked)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _pid: int = field(default_factory=os.getpid, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:  # workers open their own reader
        return {k: v for k, v in self.__dict__.items() if k not in ("_dataset", "_lock", "_pid")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _dataset=None, _lock=threading.Lock(), _pid=os.getpid())

    def describe(self, i: int) -> str:
        return f"{self.root} sample {int(self.rows[i])}"

    def read(self, i: int, channels: int) -> Tensor:
        return decode_bytes(self.record_bytes(i), channels)

    def record_bytes(self, i: int) -> bytes:
        """The stored bytes of sample i. A failed read is retried once on a fresh reader (with a warning):
        litdata's reader can be left holding a stale chunk state after an error, failing every later
        read of that chunk. A missing record or file is not retried."""
        if self._pid != os.getpid():  # a forked worker: its copy of the lock may have been held at the fork
            self.__setstate__(self.__getstate__())
        with self._lock:
            try:
                record = self._reader()[int(self.rows[i])]
            except (IndexError, FileNotFoundError):
                raise
            except Exception as exc:  # litdata raises many types, bare AssertionErrors among them
                warnings.warn(f"{self.describe(i)}: reading it failed ({type(exc).__name__}: {exc}); retrying on a fresh reader",
                              stacklevel=2)  # fmt: skip
                self._dataset = None
                record = self._reader()[int(self.rows[i])]
            return bytes(record["image"])  # a copy: the record may view the reader's current chunk map

    def _reader(self) -> Any:
        if self._dataset is None:
            from litdata import StreamingDataset

            # one record per read: litdata's default unpacks a window of up to 256 records to return one
            # (measured: 0.45 ms of 1.07 per random read; BENCHMARKS.md, Shards)
            self._dataset = StreamingDataset(self.root, batch_decode=1)
        return self._dataset

    def select(self, rows: np.ndarray) -> "ShardIndex":
        return ShardIndex(self.root, self.rows[rows], self.labels[rows], self.classes)


def read_meta(root: str | Path) -> dict[str, Any]:
    location = f"{str(root).rstrip('/')}/meta.json" if is_remote(root) else Path(root) / "meta.json"
    try:
        if is_remote(root):
            import fsspec  # litdata's cloud paths; fsspec comes with it

            with fsspec.open(str(location), "r") as f:
                return json.load(f)
        return json.loads(Path(location).read_text())
    except FileNotFoundError:
        raise DataError(f"data_dir: {root} holds no packed dataset (no meta.json); write one with `hybridssl pack`") from None


def shard_index(root: str | Path, split: str) -> ShardIndex:
    """The packed split of `root` (a local folder or a URL litdata reads)."""
    meta = read_meta(root)
    if meta.get("format") != FORMAT:
        raise DataError(f"{root}: packed with format {meta.get('format')}, this version reads {FORMAT}; pack it again")
    name = SPLIT_NAMES.get(split, split)
    if name not in meta.get("splits", {}):
        raise DataError(f"{root} has no {name} split (it has {', '.join(meta.get('splits', {}))})")
    location = split_location(root, split)
    labels = load_labels(location, meta["splits"][name])
    return ShardIndex(location, np.arange(len(labels)), labels, meta.get("classes"))


def load_labels(location: str, count: int) -> np.ndarray:
    if is_remote(location):
        import fsspec

        with fsspec.open(f"{location}/labels.npy", "rb") as f:
            labels = np.load(f, allow_pickle=False)
    else:
        labels = np.load(Path(location) / "labels.npy", allow_pickle=False)
    if len(labels) != count:
        raise DataError(f"{location}: {len(labels)} labels for {count} images; pack it again")
    return labels.astype(np.int64)


# ----------------------------------------------------------------------------- writing


class _Records:
    """litdata's `fn`: sample i of a source -> its record (picklable for litdata's worker)."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def __call__(self, i: int) -> dict[str, Any]:
        return {"index": i, "label": int(self.source.labels[i]), "image": self.source.encoded(i)}


@dataclass
class FileSource:
    """Files of an index, stored as their own bytes."""

    index: Any
    labels: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.labels = self.index.labels

    def __len__(self) -> int:
        return len(self.index)

    def encoded(self, i: int) -> bytes:
        return Path(self.index.path(i)).read_bytes()


@dataclass
class ArraySource:
    """uint8 images in memory (the named datasets), stored as lossless PNG."""

    images: Tensor
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def encoded(self, i: int) -> bytes:
        from torchvision.io import encode_png

        return encode_png(self.images[i]).numpy().tobytes()


def written_records(location: str) -> int:
    """How many records litdata's index of a written split lists."""
    if is_remote(location):
        import fsspec

        with fsspec.open(f"{location}/index.json", "r") as f:
            index = json.load(f)
    else:
        index = json.loads((Path(location) / "index.json").read_text())
    return sum(int(chunk.get("chunk_size", 0)) for chunk in index.get("chunks", []))


def write_split(source: Any, location: str, chunk_bytes: str = "64MB") -> None:
    """Writes one split, checks that every record landed (a packing worker killed by the system leaves
    an index without chunks and no error), then its labels."""
    import multiprocessing

    from litdata import optimize

    start_method = multiprocessing.get_start_method(allow_none=True)
    try:
        optimize(fn=_Records(source), inputs=list(range(len(source))), output_dir=location, chunk_bytes=chunk_bytes,
                 num_workers=1, mode="overwrite")  # fmt: skip
    finally:  # litdata switches the whole process to "spawn": later DataLoaders would start slowly
        multiprocessing.set_start_method(start_method, force=True)
    written = written_records(location)
    if written != len(source):
        raise DataError(f"packing {location} wrote {written} of {len(source)} records (the packing process died?); "
                        "nothing usable was written, run `hybridssl pack` again")  # fmt: skip
    labels = np.asarray(source.labels, dtype=np.int64)
    if is_remote(location):
        import fsspec

        with fsspec.open(f"{location}/labels.npy", "wb") as f:
            np.save(f, labels)
    else:
        from hybridssl.files import atomic_write

        atomic_write(Path(location) / "labels.npy", lambda f: np.save(f, labels))


def write_meta(root: str | Path, meta: dict[str, Any]) -> None:
    text = json.dumps({"format": FORMAT, **meta}, indent=1)
    if is_remote(root):
        import fsspec

        with fsspec.open(f"{str(root).rstrip('/')}/meta.json", "w") as f:
            f.write(text)
        return
    from hybridssl.files import atomic_write_text

    os.makedirs(root, exist_ok=True)
    atomic_write_text(Path(root) / "meta.json", text)
