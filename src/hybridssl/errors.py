"""The errors a user can cause, one type per kind; the CLI prints each as one line and exits with 2.

They live in one small module with no heavy imports, so the CLI can catch them without loading
torch or Lightning first.
"""

from __future__ import annotations

import errno


class ConfigError(ValueError):
    """An invalid setting; the message names the field."""


class DataError(ValueError):
    """Missing, unreadable or inconsistent data; the message says what and where."""


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint; the message names it."""


class NonFiniteLossError(RuntimeError):
    """The loss (or the weights) became NaN or infinite; the message carries the step."""


class DiskFullError(OSError):
    """No room left where a file was being written (ENOSPC, or EDQUOT: a quota). An OSError still, so
    code that falls back on a failed write (a copy instead of a link) keeps doing so; the message names
    the file and says what is intact."""

    def __init__(self, message: str, code: int = errno.ENOSPC, filename: str | None = None) -> None:
        super().__init__(code, message, filename)

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno 28]"
        return str(self.strerror)

    def __reduce__(self) -> tuple:  # across processes (OSError would pass its errno as the message)
        return type(self), (self.strerror, self.errno, self.filename)


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` says the disk (or the user's quota on it) is full."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class RunRequeued(BaseException):
    """A run stopped on SLURM's warning signal (hybridssl/slurm.py). Not an error, and a BaseException
    like KeyboardInterrupt, so that a loop which spares the rest from one failure (compare's) does not
    go on in the job's last seconds. The CLI prints the message (empty on ranks but 0) and exits with 0
    when the job was requeued."""

    def __init__(self, message: str, requeued: bool) -> None:
        super().__init__(message)
        self.requeued = requeued


class Terminated(BaseException):
    """The command was asked to stop with SIGTERM (how SLURM's scancel and time limit, Kubernetes and
    spot preemption stop a job). A BaseException like KeyboardInterrupt, so no loop that spares the rest
    from one failure goes on. The CLI prints the message (empty on ranks but 0) with the command's resume
    hint and exits with 143 (128 + SIGTERM, what the job would report had the signal killed it)."""


USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, DataError, CheckpointError, NonFiniteLossError, DiskFullError)
