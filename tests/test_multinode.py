"""Two "nodes" of one process each on this machine, started as a cluster launcher starts them (gloo on the
loopback address, MASTER_ADDR=127.0.0.1, NODE_RANK 0 and 1, `--num-nodes 2 --devices 1`): the run equals
a 2-process single-node run with the same global batch, checkpoints are written once (rank 0), from
stored images and from streamed files; killing one node and restarting both resumes from the last
checkpoint and ends where an uninterrupted run ends."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from hybridssl.weights.ours import load_checkpoint
from hybridssl.report.curves import read_metrics
from tests.subprocess_runs import run_driver, start_driver

pytestmark = pytest.mark.ddp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def args_for(data: list[str], output: Path, *extra: str) -> list[str]:
    return ["pretrain", "--method", "mae", "--model", "vit-pico", "--accelerator", "cpu", "--batch-size", "16",
            "--limit-train", "64", "--max-steps", "4", "--checkpoint-every-steps", "2", "--seed", "3", "--no-progress-bar",
            "--output", str(output), "--set", "log_every_n_steps=1", "--set", "global_batch_views=true", *data, *extra]  # fmt: skip


def start_nodes(args: list[str], **env: str) -> list[subprocess.Popen]:
    """Both nodes of a 2-node job, each `--num-nodes 2 --devices 1`, as srun/torchrun-style launchers do."""
    port = str(free_port())
    return [
        start_driver([*args, "--num-nodes", "2", "--devices", "1"], MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                     NODE_RANK=str(rank), **(env if rank == 1 else {}))  # fmt: skip
        for rank in (0, 1)
    ]


def finish(nodes: list[subprocess.Popen], timeout: float = 600) -> None:
    for node in nodes:
        out, _ = node.communicate(timeout=timeout)
        assert node.returncode == 0, out.decode(errors="replace")[-3000:]


def losses(output: Path) -> list[float]:
    return [value for _, value in read_metrics(output)["train/loss"]]


def assert_two_nodes_equal_two_processes_on_one_node(data: list[str], tmp_path: Path) -> None:
    single, nodes = tmp_path / "single", tmp_path / "nodes"
    run_driver([*args_for(data, single), "--devices", "2"])
    finish(start_nodes(args_for(data, nodes)))
    assert losses(nodes) == pytest.approx(losses(single), rel=1e-5) and len(losses(nodes)) == 4
    files = sorted(str(p.relative_to(nodes)) for p in nodes.rglob("*") if p.is_file() and "tfevents" not in p.name)
    assert files == ["checkpoints/last.ckpt", "checkpoints/step0000002.ckpt", "checkpoints/step0000004.ckpt",
                     "config.yaml", "logs/csv/metrics.csv", "logs/tensorboard/hparams.yaml"]  # fmt: skip
    ckpt = load_checkpoint(nodes / "checkpoints" / "last.ckpt")
    assert ckpt["hybridssl"]["rng"]["torch"].shape[0] == 2 and ckpt["callbacks"]["DataPosition"]["global_batch"] == 32
    assert ckpt["hybridssl"]["config"]["num_nodes"] == 2


def test_two_nodes_equal_two_processes_on_one_node_and_write_once(fmnist_dir, tmp_path):
    assert_two_nodes_equal_two_processes_on_one_node(["--data-dir", str(fmnist_dir)], tmp_path)


@pytest.mark.slow
def test_two_nodes_from_streamed_files(photo_root, tmp_path):
    data = ["--dataset", "folder", "--data-dir", str(photo_root), "--image-size", "32", "--patch-size", "8",
            "--loader", "stream", "--num-workers", "1"]  # fmt: skip
    assert_two_nodes_equal_two_processes_on_one_node(data, tmp_path)


@pytest.mark.slow
def test_one_node_killed_then_both_restarted_resume_from_the_last_checkpoint(fmnist_dir, tmp_path):
    data = ["--data-dir", str(fmnist_dir)]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    finish(start_nodes(args_for(data, reference)))
    marker = tmp_path / "stalled"
    nodes = start_nodes(args_for(data, killed), HYBRIDSSL_TEST_STALL_AT="4", HYBRIDSSL_TEST_STALL_MARKER=str(marker))
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert time.monotonic() < deadline and nodes[1].poll() is None, "node 1 never reached step 4"
        time.sleep(0.05)
    os.killpg(nodes[1].pid, signal.SIGKILL)  # node 1 dies; node 0 fails or hangs at its next collective
    try:
        nodes[0].wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(nodes[0].pid, signal.SIGKILL)  # what a cluster scheduler does to the rest of the job
        nodes[0].wait()
    assert sorted(p.name for p in (killed / "checkpoints").glob("*.ckpt")) == ["step0000002.ckpt"]
    finish(start_nodes([*args_for(data, killed), "--resume"]))
    full, again = (load_checkpoint(out / "checkpoints" / "last.ckpt") for out in (reference, killed))
    assert again["global_step"] == 4
    for key, value in full["state_dict"].items():
        assert torch.equal(value, again["state_dict"][key]), key
