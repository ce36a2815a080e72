"""The one atomic file writer: checkpoints, exported weights, configs, results pages and indexes.

A temporary file beside the target is written, flushed to disk and renamed over it, so a reader (or a
resumed run after a kill) sees either the previous file or the new one, never a torn one. The temporary
name is fixed per target (`.NAME.tmp`): a kill during a write leaves at most one stale file, which the
next write of that target replaces. One writer per target (rank 0 only).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import yaml


def temporary_path(path: Path, unique: bool = False) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp" if unique else f".{path.name}.tmp")


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any], unique: bool = False) -> None:
    """Calls `write(file)` on a temporary file, fsyncs it, renames it over `path`, fsyncs the folder.
    `unique`: a temporary name per process, for files that several processes may write at once with
    the same content (a data index built by every rank)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path, unique)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_yaml(data: dict[str, Any], path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
