"""The errors a user can cause, one type per kind; the CLI prints each as one line and exits with 2.

They live in one small module with no heavy imports, so the CLI can catch them without loading
torch or Lightning first.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid setting; the message names the field."""


class DataError(ValueError):
    """Missing, unreadable or inconsistent data; the message says what and where."""


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint; the message names it."""


class NonFiniteLossError(RuntimeError):
    """The loss (or the weights) became NaN or infinite; the message carries the step."""


class RunRequeued(BaseException):
    """A run stopped on SLURM's warning signal (hybridssl/slurm.py). Not an error, and a BaseException
    like KeyboardInterrupt, so that a loop which spares the rest from one failure (compare's) does not
    go on in the job's last seconds. The CLI prints the message (empty on ranks but 0) and exits with 0
    when the job was requeued."""

    def __init__(self, message: str, requeued: bool) -> None:
        super().__init__(message)
        self.requeued = requeued


USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, DataError, CheckpointError, NonFiniteLossError)
