"""Two CPU processes (gloo) through the public CLI: a contrastive baseline and the three MAE-CT stages."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hybridssl.weights.ours import load_checkpoint

SRC = Path(__file__).resolve().parents[1] / "src"


def pretrain_ddp(method, fmnist_dir, out, steps=2):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "hybridssl", "pretrain", "--method", method, "--data-dir", str(fmnist_dir),
           "--model", "vit-pico", "--batch-size", "16", "--max-steps", str(steps), "--devices", "2",
           "--accelerator", "cpu", "--no-progress-bar", "--output", str(out)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.ddp
def test_simclr_on_two_processes(fmnist_dir, tmp_path):
    pretrain_ddp("simclr", fmnist_dir, tmp_path)
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2 and ckpt["hybridssl"]["config"]["devices"] == 2


@pytest.mark.ddp
@pytest.mark.slow
def test_mae_ct_stages_on_two_processes(fmnist_dir, tmp_path):
    pretrain_ddp("mae-ct", fmnist_dir, tmp_path)
    tune = load_checkpoint(tmp_path / "stage3-tune" / "checkpoints" / "last.ckpt")
    assert tune["global_step"] == 2
    queue_ids = tune["state_dict"]["method.queue.ids"]
    # 2 steps of the head stage + 2 of tuning, each enqueueing view 1 of the global batch (2 x 16)
    assert (queue_ids >= 0).sum().item() == min(len(queue_ids), 4 * 32)
    assert len(set(queue_ids[queue_ids >= 0].tolist())) > 32  # both ranks' samples, not one rank's twice


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.parametrize("method", ["mocov3", "nnclr"])
def test_other_baselines_on_two_processes(method, fmnist_dir, tmp_path):
    pretrain_ddp(method, fmnist_dir, tmp_path)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 2
