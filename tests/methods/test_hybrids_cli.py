"""CMAE, CAN and MACRL through the public CLI on the tiny Fashion-MNIST fixture, with their defaults."""

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hybridssl.cli import main
from hybridssl.weights.ours import load_checkpoint

TINY = ["--dataset", "fashion-mnist", "--model", "vit-pico", "--batch-size", "16", "--accelerator", "cpu", "--no-progress-bar"]
QUEUE = ["--set", "method_args.queue_size=64"]  # the fixture has 512 images, fewer than the default 4096
LOSSES = {
    "cmae": {"reconstruction", "contrastive"},
    "can": {"reconstruction", "contrastive", "denoising"},
    "macrl": {"reconstruction", "contrastive", "momentum_reconstruction"},
}
STATE = {"cmae": "target_encoder.module.", "can": "noise_embed.", "macrl": "queue.features"}


@pytest.mark.parametrize("method", ["cmae", "can", "macrl"])
def test_pretrain_from_the_cli(method, fmnist_dir, tmp_path):
    extra = QUEUE if method == "macrl" else []
    args = ["pretrain", "--method", method, *TINY, "--data-dir", str(fmnist_dir), "--max-steps", "2",
            "--output", str(tmp_path), "--set", "log_every_n_steps=1", *extra]  # fmt: skip
    assert main(args) == 0
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2 and any(k.startswith("method." + STATE[method]) for k in ckpt["state_dict"])
    with open(tmp_path / "logs" / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {f"train/{name}" for name in LOSSES[method] | {"loss"}} <= rows[0].keys()
    assert all(float(r["train/loss"]) > 0 for r in rows if r.get("train/loss"))


def test_macrl_queue_bigger_than_the_data_fails_before_training(fmnist_dir, tmp_path, capsys):
    code = main(["pretrain", "--method", "macrl", *TINY, "--data-dir", str(fmnist_dir), "--max-steps", "1", "--output", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "method_args.queue_size: 4096 exceeds the 512 training images" in err[0]
    assert not (tmp_path / "checkpoints").exists()


def test_macrl_resume_restores_queue_and_momentum_branch_exactly(fmnist_dir, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    args = ["pretrain", "--method", "macrl", *TINY, "--data-dir", str(fmnist_dir), "--max-steps", "2", *QUEUE,
            "--checkpoint-every-steps", "1", "--seed", "1"]  # fmt: skip
    assert main([*args, "--output", str(full)]) == 0
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(full / "checkpoints" / "step0000001.ckpt", resumed / "checkpoints" / "last.ckpt")
    assert main([*args, "--output", str(resumed), "--resume"]) == 0
    a = load_checkpoint(full / "checkpoints" / "last.ckpt")["state_dict"]
    b = load_checkpoint(resumed / "checkpoints" / "last.ckpt")["state_dict"]
    assert a.keys() == b.keys() and a["method.queue.ptr"].item() == 2 * 16
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.parametrize("method", ["cmae", "can", "macrl"])
def test_two_cpu_processes(method, fmnist_dir, tmp_path):
    """DDP on 2 CPU processes: Lightning relaunches the command line, so run the CLI as a process."""
    extra = QUEUE if method == "macrl" else []
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    cmd = [sys.executable, "-m", "hybridssl", "pretrain", "--method", method, *TINY, "--data-dir", str(fmnist_dir),
           "--max-steps", "2", "--devices", "2", "--output", str(tmp_path), *extra]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2
    if method == "macrl":  # both ranks' keys were gathered into the queue: 2 steps x 2 ranks x 16
        assert ckpt["state_dict"]["method.queue.ptr"].item() == 0 and (ckpt["state_dict"]["method.queue.ids"] >= 0).all()
