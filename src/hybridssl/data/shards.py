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
litdata runs quiet (`verbose=False`: no account advert, no logs, no bar per split); the worker counts
its records in shared memory and the caller's one bar follows that count.

Damage: `pack` stores only files that decode (decode.verify_bytes; each one left out is named and
listed in meta.json under `left_out`). A local split's chunks are checked against litdata's
index.json (present, and of the size it records) when the split is opened and again (one stat)
before each record is read: litdata would otherwise wait 2 s for every read of a missing or short
chunk and fail each of them, which looks like a stalled run, and reading a chunk cut short after
litdata mapped it kills the process (SIGBUS). A damaged chunk is a ChunkError naming it, which stops
training at once (it is the pack's fault, not one image's).
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from hybridssl.data.decode import decode_bytes, verify_bytes
from hybridssl.data.index import LabelledSamples
from hybridssl.errors import DataError

FORMAT = 1
SPLIT_NAMES = {"train": "train", "unlabeled": "train", "train+unlabeled": "train", "test": "test"}


def is_remote(location: str | Path) -> bool:
    return "://" in str(location)


def split_location(root: str | Path, split: str) -> str:
    name = SPLIT_NAMES.get(split, split)
    return f"{str(root).rstrip('/')}/{name}" if is_remote(root) else str(Path(root) / name)


class ChunkError(DataError):
    """A chunk of a packed split missing or not of its recorded size: the pack is damaged."""


@dataclass(frozen=True)
class ChunkTable:
    """Where the records of a local split live: litdata's index.json lists its chunks in record order."""

    location: str
    ends: list[int]  # records up to and including chunk k
    names: list[str]
    sizes: list[int]  # bytes of each chunk as written
    exact: bool  # uncompressed chunks: the file has exactly that size
    paths: list[str] = field(init=False)  # made once: a check runs before every record read

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", [os.path.join(self.location, name) for name in self.names])

    def problem(self, k: int) -> str | None:
        """What is wrong with chunk k on disk, or None (one stat: ~5 us per record read, measured)."""
        path = self.paths[k]
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            return f"chunk {path} is missing"
        except OSError as exc:
            return f"chunk {path} cannot be read ({exc.strerror})"
        if self.exact and size != self.sizes[k]:
            return f"chunk {path} has {size:,} bytes, index.json says {self.sizes[k]:,} ({'truncated' if size < self.sizes[k] else 'damaged'})"
        return None


def chunk_table(location: str) -> ChunkTable:
    """The chunk table of a local split; a missing or unreadable index.json is a ChunkError."""
    path = Path(location) / "index.json"
    try:
        index = json.loads(path.read_text())
        chunks = index["chunks"]
        names, sizes = [str(c["filename"]) for c in chunks], [int(c["chunk_bytes"]) for c in chunks]
        ends = list(itertools.accumulate(int(c["chunk_size"]) for c in chunks))
    except FileNotFoundError:
        raise ChunkError(f"{location}: damaged pack: {path} is missing; pack it again with `hybridssl pack`") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ChunkError(f"{location}: damaged pack: {path} is unreadable ({type(exc).__name__}: {exc}); pack it again with `hybridssl pack`") from None
    exact = not (index.get("config") or {}).get("compression")
    return ChunkTable(location, ends, names, sizes, exact)


def check_chunks(location: str) -> None:
    """Fails fast, naming them, when chunks of a local split are missing or short (remote: litdata's own
    download checks apply)."""
    if is_remote(location):
        return
    table = chunk_table(location)
    problems = [p for k in range(len(table.names)) if (p := table.problem(k)) is not None]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ChunkError(f"{location}: damaged pack: {'; '.join(problems[:3])}{more}; pack it again with `hybridssl pack`")


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
    _chunks: ChunkTable | None = field(default=None, repr=False, compare=False)  # read lazily: _check_chunk

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
        read of that chunk. A missing record or file is not retried. A damaged chunk is a ChunkError."""
        if self._pid != os.getpid():  # a forked worker: its copy of the lock may have been held at the fork
            self.__setstate__(self.__getstate__())
        row = int(self.rows[i])
        with self._lock:
            self._check_chunk(row)
            try:
                record = self._reader()[row]
            except (IndexError, FileNotFoundError):
                raise
            except Exception as exc:  # litdata raises many types, bare AssertionErrors among them
                self._check_chunk(row)  # damaged meanwhile: say so rather than retry
                warnings.warn(f"{self.describe(i)}: reading it failed ({type(exc).__name__}: {exc}); retrying on a fresh reader",
                              stacklevel=2)  # fmt: skip
                self._dataset = None
                record = self._reader()[row]
            return bytes(record["image"])  # a copy: the record may view the reader's current chunk map

    def _check_chunk(self, row: int) -> None:
        """ChunkError when the local chunk holding `row` is missing or not of its recorded size."""
        if is_remote(self.root):
            return
        if self._chunks is None:
            try:
                self._chunks = chunk_table(self.root)
            except ChunkError:  # checked when the split was opened (shard_index); litdata's reader says it
                self._chunks = ChunkTable(self.root, [], [], [], exact=False)
        k = bisect.bisect_right(self._chunks.ends, row)
        if k >= len(self._chunks.names):
            return  # past the last chunk: litdata's IndexError says so
        problem = self._chunks.problem(k)
        if problem is not None:
            raise ChunkError(f"{self.root}: damaged pack: {problem}; pack it again with `hybridssl pack`")

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
    check_chunks(location)
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
    """litdata's `fn`: sample i of a source -> its record (picklable for litdata's worker, which adds one
    to `done`, shared with the packing process, per record made)."""

    def __init__(self, source: Any, done: Any = None) -> None:
        self.source = source
        self.done = done  # a multiprocessing Value("q") of the spawn context, or None

    def __call__(self, i: int) -> dict[str, Any]:
        record = {"index": i, "label": int(self.source.labels[i]), "image": self.source.encoded(i)}
        if self.done is not None:
            with self.done.get_lock():
                self.done.value += 1
        return record


class _Follow(threading.Thread):
    """Moves a progress bar to a count that another process raises, twice a second, until stopped."""

    def __init__(self, done: Any, bar: Any) -> None:
        super().__init__(daemon=True)
        self.done, self.bar, self.seen, self.stopped = done, bar, 0, threading.Event()

    def catch_up(self) -> None:
        now = self.done.value
        if now != self.seen:  # no redraw without news: a log gets a line per change at most
            self.bar.update(now - self.seen)
            self.seen = now

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            self.catch_up()

    def stop(self) -> None:
        self.stopped.set()
        self.join()
        self.catch_up()


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


def keep_readable(splits: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The splits without the files that would not decode (decode.verify_bytes, from threads), so a pack
    holds only what training can read; each file left out is named in a warning, and returned per split
    (one line each). Array sources are PNGs encoded here: always readable."""
    kept, left_out = {}, {}
    for split, source in splits.items():
        if not isinstance(source, FileSource):
            kept[split] = source
            continue
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            problems = list(pool.map(lambda i: _unreadable(source, i), range(len(source))))
        bad = [p for p in problems if p is not None]
        left_out[split] = bad
        for line in bad:
            warnings.warn(f"pack: leaving out unreadable image {line}", stacklevel=2)
        if not bad:
            kept[split] = source
            continue
        keep = np.array([i for i, p in enumerate(problems) if p is None], dtype=np.int64)
        if not len(keep):
            raise DataError(f"pack: no readable images in the {split} split of {source.index.root} ({len(bad)} unreadable; first: {bad[0]})")
        warnings.warn(f"pack: left out {len(bad)} of {len(source)} files of the {split} split (meta.json lists them under left_out)",
                      stacklevel=2)  # fmt: skip
        kept[split] = FileSource(source.index.select(keep))
    return kept, left_out


def _unreadable(source: FileSource, i: int) -> str | None:
    """None when file i of `source` decodes, else one line naming it and why."""
    try:
        verify_bytes(source.encoded(i))
    except DataError:  # a decode setting, not this file
        raise
    except Exception as exc:  # decoders raise many types for broken files
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        return f"{source.index.describe(i)}: {type(exc).__name__}: {message}"
    return None


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


def write_split(source: Any, location: str, chunk_bytes: str = "64MB", progress: Any = None) -> None:
    """Writes one split, checks that every record landed (a packing worker killed by the system leaves
    an index without chunks and no error), then its labels. `progress`: a tqdm bar that advances by one
    per record written (litdata's own output is off)."""
    import multiprocessing
    import signal

    from litdata import optimize

    start_method = multiprocessing.get_start_method(allow_none=True)
    # litdata's worker is spawned: the counter must come from that context to travel with it
    done = multiprocessing.get_context("spawn").Value("q", 0) if progress is not None else None
    follow = _Follow(done, progress) if done is not None else None
    if follow is not None:
        follow.start()
    sigint = signal.getsignal(signal.SIGINT)
    try:
        optimize(fn=_Records(source, done), inputs=list(range(len(source))), output_dir=location, chunk_bytes=chunk_bytes,
                 num_workers=1, mode="overwrite", start_method="spawn", verbose=False)  # fmt: skip
    finally:  # litdata switches the whole process to "spawn": later DataLoaders would start slowly
        multiprocessing.set_start_method(start_method, force=True)
        # and leaves a SIGINT handler that ends the process with os._exit(0): a later Ctrl+C would end
        # training silently with status 0 instead of stopping it with its message
        signal.signal(signal.SIGINT, sigint)
        if follow is not None:
            follow.stop()
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
