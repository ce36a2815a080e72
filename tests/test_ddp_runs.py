"""`--devices 2 --accelerator cpu`: two processes (gloo) through Lightning.

What "match" means here: the engine draws the randomness of the global batch identically on every
rank (views of the whole global batch, masks and picks from `nn.batch_random`), SyncBatchNorm and the
gathered losses and queues see the global batch, and the logged loss is the mean over ranks. So a
2 x B run computes, step for step, the losses of a 1 x 2B run on the same samples with the same
views and masks; they differ only by the order of float sums (gradient all-reduce, per-rank means).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from hybridssl.cli import main
from hybridssl.weights.ours import load_checkpoint
from hybridssl.methods import METHODS
from hybridssl.report.curves import read_metrics
from tests.subprocess_runs import run_driver, threads

pytestmark = pytest.mark.ddp


@pytest.fixture(autouse=True)
def _threads() -> Iterator[None]:
    with threads():
        yield


def run_args(method: str, data_dir: Path, output: Path, devices: int, batch: int, *extra: str) -> list[str]:
    return ["pretrain", "--method", method, "--model", "vit-pico", "--accelerator", "cpu", "--devices", str(devices),
            "--batch-size", str(batch), "--limit-train", "64", "--max-steps", "4", "--checkpoint-every-steps", "2",
            "--data-dir", str(data_dir), "--seed", "7", "--no-progress-bar", "--output", str(output),
            "--set", "log_every_n_steps=1", "--set", "global_batch_views=true", *extra]  # fmt: skip


def losses(output: Path) -> list[float]:
    return [value for _, value in read_metrics(output)["train/loss"]]


def assert_two_processes_match_one(method: str, data_dir: Path, tmp_path: Path, *extra: str) -> tuple[Path, str]:
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(run_args(method, data_dir, one, 1, 32, *extra)) == 0
    printed = run_driver(run_args(method, data_dir, two, 2, 16, *extra))
    assert len(losses(one)) == 4
    assert losses(two) == pytest.approx(losses(one), rel=1e-5)
    a, b = (load_checkpoint(out / "checkpoints" / "last.ckpt") for out in (one, two))
    assert a["state_dict"].keys() == b["state_dict"].keys()
    # Parameters whose gradient is zero up to round-off (a bias before a BatchNorm, the key bias of
    # attention) still move by ~lr per Adam step, in a direction the round-off decides: they agree
    # only to 2 x lr x steps. The losses above are the tight check.
    lr = a["optimizer_states"][0]["param_groups"][0]["initial_lr"]
    for key, value in a["state_dict"].items():
        if value.is_floating_point():
            assert (value - b["state_dict"][key]).abs().max() <= 2 * lr * 4, key
        else:  # queue ids, pointers, BatchNorm counters
            assert torch.equal(value, b["state_dict"][key]), key
    return two, printed


def test_mae_two_processes_match_one_and_only_rank_zero_writes(fmnist_dir, tmp_path):
    two, printed = assert_two_processes_match_one("mae", fmnist_dir, tmp_path)
    files = sorted(str(p.relative_to(two)) for p in two.rglob("*") if p.is_file())
    events = [f for f in files if "tfevents" in f]
    assert len(events) == 1, files
    assert [f for f in files if f not in events] == [
        "checkpoints/last.ckpt", "checkpoints/step0000002.ckpt", "checkpoints/step0000004.ckpt",
        "config.yaml", "logs/csv/metrics.csv", "logs/tensorboard/hparams.yaml",
    ]  # fmt: skip
    assert printed.count("pretraining done") == 1
    ckpt = load_checkpoint(two / "checkpoints" / "last.ckpt")
    assert ckpt["hybridssl"]["rng"]["torch"].shape[0] == 2, "the RNG states of both ranks"
    assert ckpt["callbacks"]["DataPosition"]["global_batch"] == 32


@pytest.mark.slow
def test_queue_and_ema_two_processes_match_one(fmnist_dir, tmp_path):
    """Gathered queue writes, gathered NNCLR predictions, SyncBatchNorm in an EMA head, a top-k pick."""
    assert_two_processes_match_one("toy-queue-ema", fmnist_dir, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["nnclr", "macrl"])
def test_methods_without_buffer_broadcast_two_processes_match_one(method, fmnist_dir, tmp_path):
    """These skip DDP's per-forward copy of rank 0's buffers (queue, EMA BatchNorm statistics): a rank
    whose buffers drifted would change the mean loss, so matching one process shows they agree."""
    assert not METHODS[method].broadcast_buffers
    assert_two_processes_match_one(method, fmnist_dir, tmp_path, "--set", "method_args.queue_size=48")


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_on_two_processes(method, fmnist_dir, tmp_path):
    # a queue of 48 fits the 64 images and holds one global batch (32)
    extra = ["--set", "method_args.queue_size=48"] if "queue_size" in METHODS[method].Config.model_fields else []
    run_driver(run_args(method, fmnist_dir, tmp_path, 2, 16, *extra))
    finals = list(tmp_path.rglob("last.ckpt"))
    assert finals and all(load_checkpoint(p)["global_step"] == 4 for p in finals)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mae", "toy-queue-ema"])
def test_two_processes_killed_and_resumed_end_bit_identical(method, fmnist_dir, tmp_path):
    """Both ranks SIGKILLed before step 4 (checkpoint at 2), resumed on two processes: every rank's RNG
    states, the queue and the data position come back; the end equals an uninterrupted 2-process run."""
    from tests.test_resume_kill import assert_same_training_state, kill, wait_until
    from tests.subprocess_runs import start_driver

    reference, killed = tmp_path / "reference", tmp_path / "killed"
    run_driver(run_args(method, fmnist_dir, reference, 2, 16))
    marker = tmp_path / "stalled"
    proc = start_driver(run_args(method, fmnist_dir, killed, 2, 16), HYBRIDSSL_TEST_STALL_AT="4", HYBRIDSSL_TEST_STALL_MARKER=str(marker))
    wait_until(proc, marker.exists)
    kill(proc)
    assert sorted(p.name for p in (killed / "checkpoints").glob("step*.ckpt")) == ["step0000002.ckpt"]
    run_driver(run_args(method, fmnist_dir, killed, 2, 16, "--resume"))
    assert_same_training_state(reference / "checkpoints" / "last.ckpt", killed / "checkpoints" / "last.ckpt")
