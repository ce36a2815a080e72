"""The one atomic file writer: checkpoints, exported weights, configs, results pages and indexes.

A temporary file beside the target is written, flushed to disk and renamed over it, so a reader (or a
resumed run after a kill) sees either the previous file or the new one, never a torn one. Every write
has its own temporary name (`.NAME.PID.RANDOM.tmp`): two processes (or threads) writing the same target
at once each rename a whole file of their own, the last one winning, instead of one renaming the other's
half-written file away and crashing (a fixed `.NAME.tmp` did: two runs started together in one output
folder). A kill during a write leaves that write's temporary file; the engine removes the ones in a
run's checkpoint folder when the run starts (under its run-folder lock, engine/run_lock.py). A full
disk (or quota) fails the write with a one-line DiskFullError naming the file; the previous version of
the file is left as it was.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import yaml

from hybridssl.errors import DiskFullError, is_disk_full


def temporary_path(path: Path, unique: bool = True) -> Path:
    """A temporary name beside `path` that no other write uses: this process's id and a random part
    (threads of one process write too). `unique` is accepted from callers written when names were
    shared by default; every name is unique now."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any], unique: bool = True) -> None:
    """Calls `write(file)` on a temporary file, fsyncs it, renames it over `path`, fsyncs the folder.
    Several writers of one target at once (a data index built by every rank) are safe: each renames its
    own whole file. A full disk raises DiskFullError naming `path` (the temporary file removed)."""
    path = Path(path)
    try:
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
    except OSError as exc:
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            kept = "its previous version is intact" if path.exists() else "nothing was written"
            raise DiskFullError(f"disk full: {path} could not be written ({exc.strerror}); {kept}", exc.errno, str(path)) from exc
        raise
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
