"""SIGTERM during pretraining: how SLURM (scancel, the time limit), Kubernetes and spot preemption stop
a job, with SIGKILL after a grace period (SLURM's KillWait, Kubernetes' 30 s by default).

Left to Lightning, a SIGTERM ended the fit loop at the next batch with a SystemExit of status 0 and no
checkpoint: the job read as finished, and everything since the last periodic checkpoint was lost. Here,
during the training steps it is noted and acted on where SLURM's warning is (engine/requeue.py): at the
end of the optimizer step it arrives in, every rank agreeing on the step, that step's checkpoint is
written and the command ends with `Terminated` (exit 143, a resume hint). Outside the steps (loading
data, setting up, between stages) there is nothing to save since the last checkpoint, and it stops the
command at once, as Ctrl+C does.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from hybridssl.errors import Terminated


class Termination:
    """The process-wide SIGTERM handler of a pretraining command, and what it has noted."""

    def __init__(self) -> None:
        self.received = False
        self.at_step_ends = False  # inside the training steps: noted, acted on at a step's end
        self._pid: int | None = None  # the process that listens (a forked data worker does not act)

    @property
    def listening(self) -> bool:
        return self._pid == os.getpid()

    @contextmanager
    def listen(self) -> Iterator[bool]:
        """Handles SIGTERM for the block and puts the previous handler back after it; yields whether it
        does (handlers can be set from the main thread only; a nested block leaves the outer one's)."""
        if self.listening or threading.current_thread() is not threading.main_thread():
            yield self.listening
            return
        before = signal.getsignal(signal.SIGTERM)
        self._pid, self.received, self.at_step_ends = os.getpid(), False, False
        signal.signal(signal.SIGTERM, self._handle)
        try:
            yield True
        finally:
            signal.signal(signal.SIGTERM, before)
            self._pid, self.received, self.at_step_ends = None, False, False

    def defer_to_step_ends(self, defer: bool = True) -> None:
        """From the first training step on (`defer`), SIGTERM is noted for the next step's end; after the
        last one it stops at once again. Lightning installs its own handler when its fit starts (it would
        end the loop at the next batch, in the middle of an accumulation, with status 0): ours replaces it
        for the steps, and Lightning's teardown puts ours back."""
        if not self.listening:
            return
        self.at_step_ends = defer
        if defer and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:  # a forked data worker: its parent stops it
            return
        self.received = True
        if not self.at_step_ends:
            raise Terminated("")  # the layer that knows the run (engine/stages.py) says where it stopped


TERMINATION = Termination()
