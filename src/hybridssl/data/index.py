"""What a folder or file list holds: a cached index of image files with labels, and the layouts users have.

Layouts (`--data-dir`):
- a root with `train/` (and `val/`, `validation/` or `test/`): ImageNet style; pretraining and the
  evaluation's train split read `train/`, the evaluation's test split the other one. Never two classes.
- a folder of class sub-folders (labels = sorted folder names), or a flat folder (unlabelled); images
  are found at any depth below a class folder.
- a file list: a `.csv`/`.txt` file with one `path[,label]` per line (a header `path,label` is allowed),
  paths relative to the list's folder or absolute, labels class names or integers; nobody has to move
  files.

The index of a folder is built once and cached under ~/.cache/hybridssl/index/ (`$HYBRIDSSL_INDEX_DIR`
to put it elsewhere, e.g. on storage shared by the nodes; not inside the data folder, whose own
modification time it would change), together with the modification time of every directory it
listed: adding, removing or renaming a file changes its directory's time and the index is rebuilt.
Processes that start together (every rank of a node) take a lock beside the cache file: one lists, the
others read its index. A cache file that cannot be read (damaged, truncated, not an index) is named in
a warning, removed and rebuilt; a stale one (a folder changed) is rebuilt without a word.
Directory symlinks are followed, except one that leads back to a folder it lies in (a loop, which
would list forever): it is named in a warning and left out.
Paths are kept as one NumPy byte array, not a list of Python strings, so DataLoader workers forked
from the main process do not copy it page by page (reference counts would touch every string).
"""

from __future__ import annotations

import csv
import hashlib
import os
import warnings
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout
from torch import Tensor

from hybridssl.data.decode import IMAGE_SUFFIXES, read_image
from hybridssl.errors import DataError

SPLIT_FOLDERS = {"train": ("train",), "test": ("val", "validation", "test")}
LIST_SUFFIXES = {".csv", ".txt"}
INDEX_VERSION = 1
LISTING_WAIT_S = 3600  # the longest a process waits for another to list a folder (a million files on NFS: minutes)


class LabelledSamples:
    """What both indexes (files, packed shards) share: labels, classes and seeded subsets by row."""

    labels: np.ndarray  # int64, -1 = unknown
    classes: list[str] | None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def labelled(self) -> bool:
        return bool((self.labels >= 0).any())

    @property
    def num_classes(self) -> int | None:
        if self.classes is not None:
            return len(self.classes)
        return int(self.labels.max()) + 1 if self.labelled else None

    def select(self, rows: np.ndarray):  # pragma: no cover - abstract
        raise NotImplementedError

    def take(self, limit: int | None, seed: int = 0):
        """A seeded uniform subset of `limit` samples, in index order (chosen before anything is decoded)."""
        if limit is None or limit >= len(self):
            return self
        rows = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
        return self.select(rows.numpy())


@dataclass
class FileIndex(LabelledSamples):
    """Image files (relative to `root` unless absolute) with labels (-1 = unknown) and class names."""

    root: Path
    paths: np.ndarray  # bytes ("S"), one per image
    labels: np.ndarray  # int64
    classes: list[str] | None


    def path(self, i: int) -> Path:
        return self.root / os.fsdecode(bytes(self.paths[i]))

    def describe(self, i: int) -> str:
        return str(self.path(i))

    def read(self, i: int, channels: int) -> Tensor:
        """Sample i decoded at full resolution (data/decode.read_image)."""
        return read_image(self.path(i), channels)

    def select(self, rows: np.ndarray) -> "FileIndex":
        return FileIndex(self.root, self.paths[rows], self.labels[rows], self.classes)


def labels_in(labels: np.ndarray, own: list[str] | None, target: list[str] | None, where: str) -> np.ndarray:
    """Labels numbered by `own` class names renumbered by `target`'s (a val/ folder lacking a class of
    train/ numbers its folders differently); a class `target` lacks is an error naming it."""
    if own is None or target is None or own == target:
        return labels
    number = {name: i for i, name in enumerate(target)}
    missing = [name for name in own if name not in number]
    if missing:
        raise DataError(f"{where} has classes the train split lacks: {', '.join(missing[:5])}")
    mapping = np.array([number[name] for name in own], dtype=np.int64)
    return np.where(labels >= 0, mapping[np.clip(labels, 0, None)], labels)


def split_folder(root: Path, split: str) -> Path | None:
    """The sub-folder of an ImageNet-style root that holds `split`, or None when root is not one."""
    if not (root / "train").is_dir():
        return None
    for name in SPLIT_FOLDERS["train" if split in ("train", "unlabeled", "train+unlabeled") else "test"]:
        if (root / name).is_dir():
            return root / name
    raise DataError(f"{root} has train/ but no val/, validation/ or test/ folder for the {split} split")


def source_for(data_dir: Path, split: str) -> Path:
    """The folder or file list that holds `split` of `data_dir` (see the module docstring)."""
    if data_dir.is_file():
        if data_dir.suffix.lower() not in LIST_SUFFIXES:
            raise DataError(f"data_dir: {data_dir} is a file but not a .csv/.txt file list")
        return data_dir
    if not data_dir.is_dir():
        raise DataError(f"image folder {data_dir} does not exist")
    return split_folder(data_dir, split) or data_dir


def has_split_layout(data_dir: Path) -> bool:
    return data_dir.is_dir() and (data_dir / "train").is_dir()


# ----------------------------------------------------------------------------- listing


def _images_below(folder: Path, dirs: dict[str, int], above: frozenset[tuple[int, int]] = frozenset()) -> list[str]:
    """Image files below `folder` (any depth, hidden entries skipped), sorted; records each directory's
    modification time in `dirs`. `above`: the (device, inode) of the folders that contain `folder`; a
    directory symlink back to one of them or to a folder on its own path is a loop, left out with a
    warning (followed, it would be listed until the path grows too long)."""
    found: list[str] = []
    pending: list[tuple[str, frozenset[tuple[int, int]]]] = [(str(folder), above)]
    while pending:
        current, ancestors = pending.pop()
        info = os.stat(current)
        dirs[current] = info.st_mtime_ns  # before listing: a file added meanwhile changes it again
        ancestors = ancestors | {(info.st_dev, info.st_ino)}
        with os.scandir(current) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=True):
                    if entry.is_symlink() and _target(entry.path) in ancestors:
                        warnings.warn(f"{entry.path} is a symlink to a folder that contains it (a loop): not followed", stacklevel=4)
                        continue
                    pending.append((entry.path, ancestors))
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and entry.is_file(follow_symlinks=True):
                    found.append(entry.path)
    return sorted(found)


def _target(path: str) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def list_folder(folder: Path) -> tuple[FileIndex, dict[str, int]]:
    root = os.stat(folder)
    dirs: dict[str, int] = {str(folder): root.st_mtime_ns}
    top = frozenset({(root.st_dev, root.st_ino)})
    subdirs = []
    for d in sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")):
        if d.is_symlink() and _target(str(d)) in top:
            warnings.warn(f"{d} is a symlink to a folder that contains it (a loop): not followed", stacklevel=3)
        else:
            subdirs.append(d)
    labels: list[int] = []
    if subdirs:
        classes: list[str] | None = [d.name for d in subdirs]
        files = []
        for label, d in enumerate(subdirs):
            found = _images_below(d, dirs, top)
            files += found
            labels += [label] * len(found)
    else:
        classes, files = None, _images_below(folder, dirs, frozenset())
        labels = [-1] * len(files)
    if not files:
        raise DataError(f"image folder {folder} contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    start = len(str(folder)) + 1
    paths = np.array([os.fsencode(f[start:]) for f in files])
    return FileIndex(folder, paths, np.array(labels, dtype=np.int64), classes), dirs


def read_file_list(path: Path) -> FileIndex:
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: lists saved by spreadsheet programs
        rows = [r for r in csv.reader(f) if r and r[0].strip() and not r[0].startswith("#")]
    if rows and os.path.splitext(rows[0][0].strip())[1].lower() not in IMAGE_SUFFIXES:
        rows = rows[1:]  # a header (path,label / filename,class / ...): its first cell names no image
    if not rows:
        raise DataError(f"file list {path} names no images")
    names = [r[0].strip() for r in rows]
    raw = [r[1].strip() if len(r) > 1 and r[1].strip() else None for r in rows]
    if all(x is None for x in raw):
        labels, classes = [-1] * len(rows), None
    elif any(x is None for x in raw):
        first = next(i for i, x in enumerate(raw) if x is None)
        raise DataError(f"file list {path}: line {first + 1} has no label while others do")
    elif all(x.lstrip("-").isdigit() for x in raw):  # type: ignore[union-attr]
        labels, classes = [int(x) for x in raw], None  # type: ignore[arg-type]
    else:
        classes = sorted(set(raw))  # type: ignore[arg-type]
        number = {name: i for i, name in enumerate(classes)}
        labels = [number[x] for x in raw]  # type: ignore[index]
    return FileIndex(path.parent, np.array([os.fsencode(n) for n in names]), np.array(labels, dtype=np.int64), classes)


# ----------------------------------------------------------------------------- cache


def _cache_file(folder: Path) -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hybridssl" / "index"
    cache_dir = Path(os.environ.get("HYBRIDSSL_INDEX_DIR", default))
    return cache_dir / (hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:24] + ".npz")


def _load_cached(cache: Path, folder: Path) -> FileIndex | None:
    """The cached index when it is valid and current, else None (rebuild). A stale cache (a directory
    changed or vanished) is simply replaced; one that cannot be read is named, removed and rebuilt: left
    in place it would break every later run of the folder."""
    try:
        with np.load(cache, allow_pickle=False) as z:
            version, root = int(z["version"]), str(z["root"])
            dirs, mtimes = z["dirs"].tolist(), z["mtimes"].tolist()
            paths, labels = z["paths"], z["labels"]
            classes = z["classes"].tolist() if bool(z["has_classes"]) else None
        if len(dirs) != len(mtimes) or len(paths) != len(labels) or paths.dtype.kind != "S" or labels.dtype != np.int64:
            raise ValueError("its arrays do not fit together")
    except FileNotFoundError:
        return None
    except Exception as exc:  # numpy and zipfile raise many types for a damaged file
        _discard_cache(cache, exc)
        return None
    if version != INDEX_VERSION or root != str(folder.resolve()):
        return None
    for d, mtime in zip(dirs, mtimes, strict=True):
        try:
            if os.stat(d).st_mtime_ns != mtime:
                return None
        except OSError:
            return None
    return FileIndex(folder, paths, labels, classes)


def _discard_cache(cache: Path, exc: Exception) -> None:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
    warnings.warn(f"the cached index {cache} is damaged ({type(exc).__name__}: {reason}): listing the folder again "
                  "and rewriting it", stacklevel=4)  # fmt: skip
    with suppress(OSError):  # removed, so the processes that wait for the lister do not warn again
        cache.unlink()


def _save_cached(cache: Path, index: FileIndex, dirs: dict[str, int]) -> None:
    from hybridssl.files import atomic_write

    arrays = {
        "version": np.array(INDEX_VERSION), "root": np.array(str(index.root.resolve())),
        "paths": index.paths, "labels": index.labels,
        "has_classes": np.array(index.classes is not None), "classes": np.array(index.classes or [""]),
        "dirs": np.array(list(dirs)), "mtimes": np.array(list(dirs.values()), dtype=np.int64),
    }  # fmt: skip
    try:
        atomic_write(cache, lambda f: np.savez(f, **arrays), unique=True)
    except OSError:
        pass  # a read-only place: the index is rebuilt next time


def file_index(source: Path, cache: bool = True) -> FileIndex:
    """The index of a folder (cached, see the module docstring) or of a file list."""
    if source.is_file():
        return read_file_list(source)
    if not cache:
        index = list_folder(source)[0]
    else:
        cache_file = _cache_file(source)
        index = _load_cached(cache_file, source)
        if index is None:
            index = _listed_by_one(cache_file, source)
    _warn_ignored_top_level(index)
    return index


def _list_and_cache(cache: Path, folder: Path) -> FileIndex:
    index, dirs = list_folder(folder)
    _save_cached(cache, index, dirs)
    return index


def _cached_or_listed(cache: Path, folder: Path) -> FileIndex:
    index = _load_cached(cache, folder)
    return index if index is not None else _list_and_cache(cache, folder)


def _listed_by_one(cache: Path, folder: Path) -> FileIndex:
    """Of the processes that start at once (8 per node under torchrun), the one that takes the lock beside
    the cache file lists the folder; the others wait for it and read its index, instead of all listing a
    million files on a network filesystem together. A waiter that still finds no valid index (the cache
    could not be written) lists by itself, so the ranks never list one after another. Where no lock can
    be made (read-only, no file locks, or the cache inside the folder, which creating it would change
    before the listing), or after LISTING_WAIT_S, every process lists."""
    if folder.resolve() in cache.resolve().parents:
        return _list_and_cache(cache, folder)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(cache.with_suffix(".lock")))
        lock.acquire(blocking=False)
    except Timeout:  # held: another process is listing (Timeout is an OSError: caught first)
        held = False
    except (OSError, NotImplementedError):
        return _list_and_cache(cache, folder)
    else:
        held = True
    if not held:  # wait for the lister, then read what it wrote (the listing outside any except block)
        with suppress(OSError, NotImplementedError):
            lock.acquire(timeout=LISTING_WAIT_S)
            lock.release()
        return _cached_or_listed(cache, folder)
    try:  # a process that listed just before may have left a valid index
        return _cached_or_listed(cache, folder)
    finally:
        lock.release()


def _warn_ignored_top_level(index: FileIndex) -> None:
    """Class folders are the label source, so images lying beside them belong to no class and are left
    out; a user who meant "every image below this folder" would otherwise lose them without a word."""
    if index.classes is None:
        return
    with os.scandir(index.root) as entries:
        loose = [e.name for e in entries if not e.name.startswith(".") and e.is_file()
                 and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES]  # fmt: skip
    if loose:
        warnings.warn(
            f"{len(loose)} image(s) directly in {index.root} (e.g. {sorted(loose)[0]}) are not used: its "
            f"sub-folders are read as {len(index.classes)} classes. Move them into a class folder, or name "
            "every image in a file list (--data-dir list.csv)", stacklevel=3)
