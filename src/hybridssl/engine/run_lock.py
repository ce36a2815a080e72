"""One run at a time in an output folder.

Two runs given the same `--output` both wrote `config.yaml`, logs and checkpoints into it: started a
second apart both exited 0 naming `last.ckpt`, which held only the second run's weights; started
together, one crashed on the other's temporary file. A run now holds `OUTPUT/.hybridssl.lock` for its
whole life (every stage of a recipe included); a second run is refused with one line naming the folder
and the holder's process and host, which the holder writes into the lock file.

The lock is an OS file lock (`flock`), which the kernel (or the NFS server, when the client's lease
ends) drops when the process ends however it ends, so a crashed or killed run leaves nothing stuck: at
most the lock file, which the next run takes over. A run that ends removes the file (while it still
holds it; a run that opened the old file meanwhile sees it gone and takes the new one). A forked child
(a DataLoader worker) closes its copy of the descriptor at once: `flock` belongs to the open file, so a
worker that outlived a killed run would have kept the folder locked. Only the process that writes the
run's files takes it: global rank 0 (the other processes of a DDP run would find it held by their own
rank 0).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lightning.fabric.utilities.rank_zero import rank_zero_only

from hybridssl.errors import ConfigError, DiskFullError, is_disk_full

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

LOCK_NAME = ".hybridssl.lock"
BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)  # what flock reports for another holder (NFS: EACCES)
NO_LOCKS = (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP)  # filesystems mounted without file locks (Lustre's noflock)
HELD: set[int] = set()  # the descriptors of the locks this process holds


def forget_in_child() -> None:
    """After a fork, in the child: closes its copies of the held locks' descriptors (closing, not
    unlocking: an unlock would release the parent's lock too)."""
    for fd in HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=forget_in_child)


def holder_of(fd: int) -> str:
    """`pid 123 on host node7 since 2025-01-31 12:00:00`, as the holder of the lock file open at `fd` wrote it."""
    try:
        owner = json.loads(os.pread(fd, 4096, 0))
        return f"pid {owner['pid']} on host {owner['host']} since {owner['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its process not recorded yet"


def take(path: Path) -> tuple[int | None, str]:
    """(a descriptor holding the lock on `path`, "") or (None, who holds it)."""
    for _ in range(3):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            who = holder_of(fd)
            os.close(fd)
            if exc.errno in BUSY:
                return None, who
            raise
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(fd), current):
            return fd, ""
        os.close(fd)  # the holder before removed the file between our open and our lock: take the new one
    return None, "it changes hands as we look"


@contextmanager
def run_folder_lock(folder: str | Path) -> Iterator[None]:
    """Holds `folder` for this run for the block (created if missing), on global rank 0 only; refuses with
    a ConfigError when another run holds it. Where there are no file locks, warns and goes on."""
    folder = Path(folder)
    if rank_zero_only.rank != 0:
        yield
        return
    path = folder / LOCK_NAME
    fd = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if fcntl is not None:
            fd, who = take(path)
            if fd is None:
                raise ConfigError(f"output: {folder} is in use by another run ({who}); wait for it to end (or stop it), "
                                  "or choose another --output")  # fmt: skip
    except OSError as exc:
        if exc.errno not in NO_LOCKS:
            raise unusable(folder, exc) from None
    if fd is None:
        warnings.warn(f"output: the filesystem of {folder} has no file locks: a second run started in this folder "
                      "would not be refused (give every run its own --output)", stacklevel=3)  # fmt: skip
        yield
        return
    HELD.add(fd)
    holder = os.getpid()
    try:
        record = {"pid": holder, "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
        except OSError:  # only what a refused run is told (a full disk): the run's own writes will say
            pass
        yield
    finally:
        if os.getpid() == holder:  # (a forked child unwinding this frame has nothing to release)
            try:
                path.unlink(missing_ok=True)  # still held: nobody can have taken this file since
            finally:
                HELD.discard(fd)
                os.close(fd)  # releases the lock


def unusable(folder: Path, exc: OSError) -> Exception:
    """The one-line error for an output folder the lock file cannot even be created in."""
    if is_disk_full(exc):
        return DiskFullError(f"disk full: {folder / LOCK_NAME} could not be written ({exc.strerror})", exc.errno, str(folder / LOCK_NAME))
    if isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
        return ConfigError(f"output: {folder} is not writable ({exc.strerror})")
    return exc
