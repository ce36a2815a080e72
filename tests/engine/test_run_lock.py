"""One run at a time in an output folder: a second run given the folder of a running one is refused with
one line naming the folder and the holder (pid, host), a killed run leaves no lock behind, a recipe holds
its stage folders too, only rank 0 takes the lock, and two writers of one file at once never collide on
a temporary name (two runs started together crashed on a shared `.config.yaml.tmp`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest
from lightning.fabric.utilities.rank_zero import rank_zero_only

from hybridssl.cli import main
from hybridssl.engine.run_lock import LOCK_NAME, run_folder_lock
from hybridssl.errors import ConfigError
from hybridssl.files import atomic_write
from tests.subprocess_runs import driver_env, start_driver, threads
from tests.test_resume_kill import kill, tiny, wait_until


@pytest.fixture(autouse=True)
def _same_threads_as_subprocesses() -> Iterator[None]:
    with threads():
        yield


def test_writers_of_one_file_at_once_each_rename_a_whole_file_of_their_own(tmp_path):
    """Both writers have their temporary file open before either renames it: with one shared temporary
    name the first rename took the second writer's file away (FileNotFoundError), or renamed its half."""
    target = tmp_path / "config.yaml"
    both_open = threading.Barrier(2, timeout=10)
    failures: list[BaseException] = []

    def write(text: bytes) -> None:
        def slow(f) -> None:
            f.write(text[:3])
            both_open.wait()
            f.write(text[3:])

        try:
            atomic_write(target, slow)
        except BaseException as exc:  # noqa: BLE001  (reported below)
            failures.append(exc)

    writers = [threading.Thread(target=write, args=(text,)) for text in (b"first run\n" * 100, b"second run\n" * 100)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    assert not failures, failures
    assert target.read_bytes() in (b"first run\n" * 100, b"second run\n" * 100)
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"], "no temporary file left"


HOLD = """
import multiprocessing, sys, time
from hybridssl.engine.run_lock import run_folder_lock
with run_folder_lock(sys.argv[1]):
    worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(600,))  # as a DataLoader worker
    worker.start()
    print("held", worker.pid, flush=True)
    time.sleep(600)
"""


@pytest.fixture
def held_folder(tmp_path) -> Iterator[tuple[Path, subprocess.Popen, int]]:
    """A folder held by another process (as a run holds its --output) with a forked worker; (the folder,
    the process, the worker's pid). Both are killed with SIGKILL after the test."""
    folder = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], env=driver_env(), stdout=subprocess.PIPE, start_new_session=True)
    try:
        held, worker = proc.stdout.readline().split()
        assert held == b"held"
        yield folder, proc, int(worker)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_held_folder_is_refused_naming_the_holder_except_on_other_ranks_and_a_killed_holder_leaves_it_free(held_folder, monkeypatch):
    """Killed alone, the holder's forked worker lives on (it notices its parent's death seconds later, or
    never when it hangs): its copy of the lock's descriptor must not keep the folder locked."""
    folder, holder, worker = held_folder
    with pytest.raises(ConfigError) as refused:
        with run_folder_lock(folder):
            pass
    assert f"output: {folder} is in use by another run (pid {holder.pid} on host {socket.gethostname()} since" in str(refused.value)
    with monkeypatch.context() as rank:  # the other processes of a DDP run would find it held by their own rank 0
        rank.setattr(rank_zero_only, "rank", 1)
        with run_folder_lock(folder):
            pass
    os.kill(holder.pid, signal.SIGKILL)  # no cleanup runs
    holder.wait()
    os.kill(worker, 0)  # the worker is alive
    assert (folder / LOCK_NAME).exists()
    with run_folder_lock(folder):  # the kernel dropped the lock with the process
        pass


def test_a_second_run_is_refused_while_a_recipe_runs_in_the_folder_or_a_stage_folder(fmnist_dir, tmp_path, capsys):
    """MAE-CT, stalled in its first stage's second step, holds OUT and OUT/stage1-mae: a plain run given
    either as --output is refused with one line before it writes anything; once the recipe is killed
    (SIGKILL), both are free."""
    out, marker = tmp_path / "run", tmp_path / "stalled"
    recipe = tiny("mae-ct", fmnist_dir, out, "--max-steps", "2")
    running = start_driver(recipe, HYBRIDSSL_TEST_STALL_AT="2", HYBRIDSSL_TEST_STALL_MARKER=str(marker))
    try:
        wait_until(running, marker.exists)
        for folder in (out, out / "stage1-mae"):
            before = sorted(p.relative_to(out) for p in out.rglob("*"))
            assert main(tiny("mae", fmnist_dir, folder, "--max-steps", "2")) == 2
            lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith(f"hybridssl: error: output: {folder} is in use by another run (pid {running.pid} on host "), lines
            assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    finally:
        kill(running)
    assert running.returncode == -signal.SIGKILL
    with run_folder_lock(out), run_folder_lock(out / "stage1-mae"):
        pass


@pytest.mark.slow
def test_two_runs_started_together_one_trains_the_other_is_refused(fmnist_dir, tmp_path):
    """Started at the same moment (the probe that crashed on the shared `.config.yaml.tmp`): exactly one
    run trains and ends with 0, the other ends with 2 and the refusal, and the folder holds one run."""
    out = tmp_path / "run"
    args = tiny("mae", fmnist_dir, out, "--max-steps", "1")
    runs = [start_driver(args) for _ in range(2)]
    outputs = [run.communicate(timeout=300)[0].decode(errors="replace") for run in runs]
    assert sorted(run.returncode for run in runs) == [0, 2], outputs
    refused = outputs[[run.returncode for run in runs].index(2)]
    assert f"hybridssl: error: output: {out} " in refused and "Traceback" not in refused, refused
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.ckpt"]
    assert not [p.name for p in out.rglob(".*")], "no lock or temporary file left"

