"""Exact resume: a run killed with SIGKILL and resumed ends bit for bit where an uninterrupted run ends.

The killed run is a real subprocess (tests/cli_driver.py, which can stall at a known step); the
reference and the resumed runs run in-process with the same thread count. Compared: every tensor of
the final checkpoint's weights and buffers (EMA copies, queues, pointers), the optimizer and lr
scheduler states, the data position and every rank's RNG states.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from hybridssl.cli import main
from hybridssl.weights.ours import load_checkpoint
from hybridssl.report.curves import read_metrics
from tests.subprocess_runs import run_driver, start_driver, threads


@pytest.fixture(autouse=True)
def _same_threads_as_subprocesses() -> Iterator[None]:
    with threads():
        yield


def tiny(method: str, data_dir: Path, output: Path, *extra: str) -> list[str]:
    """64 images, batch 16: 4 steps per epoch; log every step."""
    return ["pretrain", "--method", method, "--model", "vit-pico", "--batch-size", "16", "--limit-train", "64",
            "--accelerator", "cpu", "--no-progress-bar", "--data-dir", str(data_dir), "--seed", "5",
            "--output", str(output), "--set", "log_every_n_steps=1", *extra]  # fmt: skip


def assert_same(a, b, where: str = "") -> None:
    """Nested dicts / lists / tensors / numbers equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_training_state(reference: Path, resumed: Path) -> None:
    full, again = load_checkpoint(reference), load_checkpoint(resumed)
    assert again["global_step"] == full["global_step"] and again["epoch"] == full["epoch"]
    for key in ("state_dict", "optimizer_states", "lr_schedulers"):
        assert_same(full[key], again[key], key)
    assert_same(full["callbacks"]["DataPosition"], again["callbacks"]["DataPosition"], "data position")
    assert_same(full["hybridssl"]["rng"], again["hybridssl"]["rng"], "rng")


def wait_until(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    """Returns once `ready()` holds; fails the test if the process ends or stalls first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be killed:\n{proc.stdout.read().decode()[-3000:]}")
        if time.monotonic() > deadline:
            kill(proc)
            pytest.fail("the run did not reach the kill point in time")
        time.sleep(0.02)


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL to the process group (every DDP rank too)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def kill_and_resume(method: str, data_dir: Path, tmp: Path, budget: list[str], every: int, stalls: list[int]) -> tuple[Path, Path]:
    """Reference run; then a subprocess killed before each step of `stalls` in turn (each attempt
    resuming the previous one), and a last resume to the end. Returns both outputs."""
    reference, killed = tmp / "reference", tmp / "killed"
    args = [*budget, "--checkpoint-every-steps", str(every)]
    assert main(tiny(method, data_dir, reference, *args)) == 0
    for attempt, stall_at in enumerate(stalls):
        marker = tmp / f"stalled{attempt}"
        resume = ["--resume"] if attempt else []
        proc = start_driver(tiny(method, data_dir, killed, *args, *resume), HYBRIDSSL_TEST_STALL_AT=str(stall_at), HYBRIDSSL_TEST_STALL_MARKER=str(marker))
        wait_until(proc, marker.exists)
        kill(proc)
        assert proc.returncode == -signal.SIGKILL
        steps = sorted(int(p.stem.removeprefix("step")) for p in killed.rglob("step*.ckpt"))
        assert steps and steps[-1] == (stall_at - 1) // every * every, steps
    assert main(tiny(method, data_dir, killed, *args, "--resume")) == 0
    return reference, killed


def test_mae_killed_three_times_resumes_bit_identical(fmnist_dir, tmp_path):
    """4 steps per epoch, a checkpoint every 2. Killed before steps 5, 9 and 13: each resume starts
    at an epoch's end, from the second on from a checkpoint a resumed run wrote (there Lightning's
    epoch counter drifts, by two epochs after the third resume: measured); then run to step 16."""
    reference, killed = kill_and_resume("mae", fmnist_dir, tmp_path, ["--max-steps", "16"], every=2, stalls=[5, 9, 13])
    for name in ("step0000006.ckpt", "step0000010.ckpt", "step0000014.ckpt", "last.ckpt"):
        assert_same_training_state(reference / "checkpoints" / name, killed / "checkpoints" / name)
    # the metrics of the killed parts survive the resumes; re-trained steps are logged once each
    parts = sorted(p.name for p in (killed / "logs" / "csv").glob("metrics*.csv"))
    assert parts == ["metrics.csv", "metrics.part1.csv", "metrics.part2.csv", "metrics.part3.csv"]
    logged, expected = (read_metrics(out, skip={"step"}) for out in (killed, reference))
    assert logged["train/loss"] == expected["train/loss"] and [s for s, _ in expected["train/loss"]] == list(range(16))
    assert logged["epoch"] == expected["epoch"]  # Lightning's epochs end where the data's do


def test_streamed_folder_with_workers_killed_mid_epoch_resumes_bit_identical(photo_root, tmp_path):
    """Files decoded by 2 worker processes, crops from the full photo: killed mid-epoch (before step 3 of
    4, the last checkpoint at step 2, so prefetched batches are thrown away) and resumed, the run ends
    where an uninterrupted one does, and its second epoch starts from the same batches."""
    streamed = ["--dataset", "folder", "--image-size", "32", "--patch-size", "8", "--loader", "stream", "--num-workers", "2",
                "--max-steps", "6"]  # fmt: skip
    reference, killed = kill_and_resume("simclr", photo_root, tmp_path, streamed, every=2, stalls=[3])
    for name in ("step0000004.ckpt", "last.ckpt"):
        assert_same_training_state(reference / "checkpoints" / name, killed / "checkpoints" / name)
    logged, expected = (read_metrics(out, skip={"step"}) for out in (killed, reference))
    assert logged["train/loss"] == expected["train/loss"]


QUEUE = ["--set", "method_args.queue_size=48"]
# name -> extra flags; the real methods are slow tests
QUEUE_EMA_METHODS = {"toy-queue-ema": [], "mae-ct-tune": QUEUE, "macrl": QUEUE, "mae-ct": QUEUE, "nnclr": QUEUE, "mocov3": []}


@pytest.mark.parametrize("method", [m if m == "toy-queue-ema" else pytest.param(m, marks=pytest.mark.slow) for m in QUEUE_EMA_METHODS])
def test_queue_and_ema_method_killed_resumes_bit_identical(method, fmnist_dir, tmp_path):
    """`toy-queue-ema` (tests/extra_methods.py: EMA, queue, pointer, random mask and top-k pick) runs by
    default. A recipe (`mae-ct`: one run per stage) is compared stage by stage."""
    # checkpoints at 3, 6, 9; killed before step 8 (step 7 trained and lost); resumed across the epoch end at 8
    reference, killed = kill_and_resume(method, fmnist_dir, tmp_path, ["--max-steps", "10", *QUEUE_EMA_METHODS[method]], every=3, stalls=[8])
    finals = sorted(p.relative_to(reference) for p in reference.rglob("last.ckpt"))
    assert finals
    for relative in finals:
        assert_same_training_state(reference / relative, killed / relative)


@pytest.fixture(scope="module")
def epoch_run(fmnist_dir, tmp_path_factory):
    """An uninterrupted 3-epoch run (epoch budget: 12 steps) with a checkpoint every 2 steps."""
    out = tmp_path_factory.mktemp("epochs")
    with threads():
        assert main(tiny("mae", fmnist_dir, out, "--epochs", "3", "--checkpoint-every-steps", "2")) == 0
    return out


@pytest.mark.parametrize("step", [4, 6, 8], ids=["end-of-epoch-0", "mid-epoch-1", "end-of-epoch-1"])
def test_resume_at_and_after_epoch_ends(epoch_run, fmnist_dir, tmp_path, step):
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(epoch_run / "checkpoints" / f"step{step:07d}.ckpt", tmp_path / "checkpoints" / "last.ckpt")
    assert main(tiny("mae", fmnist_dir, tmp_path, "--epochs", "3", "--checkpoint-every-steps", "2", "--resume")) == 0
    assert_same_training_state(epoch_run / "checkpoints" / "last.ckpt", tmp_path / "checkpoints" / "last.ckpt")


def test_epoch_checkpoints_resume_with_epochs_where_the_data_has_them(fmnist_dir, tmp_path):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert main(tiny("mae", fmnist_dir, reference, "--epochs", "3")) == 0  # a checkpoint per epoch
    assert sorted(p.name for p in (reference / "checkpoints").iterdir()) == ["last.ckpt", "step0000004.ckpt", "step0000008.ckpt", "step0000012.ckpt"]
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(reference / "checkpoints" / "step0000004.ckpt", resumed / "checkpoints" / "last.ckpt")
    assert main(tiny("mae", fmnist_dir, resumed, "--epochs", "3", "--resume")) == 0
    assert_same_training_state(reference / "checkpoints" / "last.ckpt", resumed / "checkpoints" / "last.ckpt")
    epochs, expected = (read_metrics(out, skip={"step"})["epoch"] for out in (resumed, reference))
    assert epochs == [(step, epoch) for step, epoch in expected if step >= 4]
    assert {p.name for p in (resumed / "checkpoints").glob("step*.ckpt")} == {"step0000008.ckpt", "step0000012.ckpt"}


def killed_after(epoch_run: Path, folder: Path, steps: list[int]) -> Path:
    """A copy of `epoch_run`'s checkpoints of `steps` only: the run as a kill after the last of them left it."""
    (folder / "checkpoints").mkdir(parents=True)
    for step in steps:
        shutil.copy2(epoch_run / "checkpoints" / f"step{step:07d}.ckpt", folder / "checkpoints")
    return folder


def trained_steps(out: Path) -> list[int]:
    return [step for step, _ in read_metrics(out)["train/loss"]]


def test_resume_takes_the_highest_step_not_the_newest_file(epoch_run, fmnist_dir, tmp_path):
    """The older checkpoint touched (a copy, a restore from a backup) was resumed from, and the run went
    back silently: here it would train steps 4-12 again instead of 8-12."""
    out = killed_after(epoch_run, tmp_path / "run", [4, 8])
    os.utime(out / "checkpoints" / "step0000004.ckpt")  # now the newest file
    stale = out / "checkpoints" / ".step0000010.ckpt.4242.0badf00d.tmp"  # a save the kill cut short
    stale.write_bytes(b"half a checkpoint")
    assert main(tiny("mae", fmnist_dir, out, "--epochs", "3", "--checkpoint-every-steps", "2", "--resume")) == 0
    assert trained_steps(out) == [8, 9, 10, 11]
    assert not stale.exists()
    assert_same_training_state(epoch_run / "checkpoints" / "last.ckpt", out / "checkpoints" / "last.ckpt")


def test_a_damaged_newest_checkpoint_is_named_set_aside_and_the_previous_one_resumed(epoch_run, fmnist_dir, tmp_path):
    out = killed_after(epoch_run, tmp_path / "run", [6, 8])
    damaged = out / "checkpoints" / "step0000008.ckpt"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])  # a torn copy
    with pytest.warns(UserWarning, match=r"resume: .*step0000008.ckpt is not a readable checkpoint .*; set aside as "
                                         r"step0000008.ckpt.damaged, resuming from step0000006.ckpt"):  # fmt: skip
        assert main(tiny("mae", fmnist_dir, out, "--epochs", "3", "--checkpoint-every-steps", "2", "--resume")) == 0
    assert trained_steps(out) == [6, 7, 8, 9, 10, 11]
    assert_same_training_state(epoch_run / "checkpoints" / "last.ckpt", out / "checkpoints" / "last.ckpt")
    assert_same_training_state(epoch_run / "checkpoints" / "step0000008.ckpt", damaged)  # written again, under its own name
    assert (out / "checkpoints" / "step0000008.ckpt.damaged").is_file()

def test_checkpoint_carries_every_ranks_rng_states_and_loads_weights_only(epoch_run):
    ckpt = torch.load(epoch_run / "checkpoints" / "last.ckpt", weights_only=True)
    rng = ckpt["hybridssl"]["rng"]
    assert {"python", "python_gauss", "numpy", "numpy_gauss", "torch"} <= rng.keys()
    assert all(isinstance(v, torch.Tensor) and v.shape[0] == 1 for v in rng.values())  # world x ...
    assert ckpt["callbacks"]["DataPosition"] == {"epoch": 2, "consumed": 4, "global_batch": 16}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mae", "toy-queue-ema"])
def test_killed_at_random_moments_until_done(method, fmnist_dir, tmp_path):
    """SIGKILL four times at random moments (during start-up, or 0-0.5 s after the 1st or 2nd new
    checkpoint: inside steps and checkpoint writes), resume after each, then let the run finish: it
    ends where an uninterrupted run ends."""
    import random

    rng = random.Random(0)
    budget = ["--max-steps", "24", "--checkpoint-every-steps", "2"]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    run_driver(tiny(method, fmnist_dir, reference, *budget))
    for attempt in range(4):
        saved = lambda: len(list(killed.glob("checkpoints/step*.ckpt")))  # noqa: E731
        before, new = saved(), rng.choice([0, 1, 2])
        proc = start_driver(tiny(method, fmnist_dir, killed, *budget, *(["--resume"] if before else [])))
        wait_until(proc, lambda: saved() >= before + new)
        time.sleep(rng.uniform(0, 3) if new == 0 else rng.uniform(0, 0.5))
        kill(proc)
        assert proc.returncode == -signal.SIGKILL, f"attempt {attempt}: the run ended first"
    run_driver(tiny(method, fmnist_dir, killed, *budget, "--resume"))
    names = sorted(p.name for p in (reference / "checkpoints").glob("*.ckpt"))
    assert sorted(p.name for p in (killed / "checkpoints").glob("*.ckpt")) == names
    for name in names:  # every intermediate checkpoint too: the first divergence, if any, is named
        assert_same_training_state(reference / "checkpoints" / name, killed / "checkpoints" / name)
