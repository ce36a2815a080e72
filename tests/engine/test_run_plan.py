"""The plan line `pretrain` prints before training, and the note it adds when the budget is shorter than
the method was measured to need."""

from __future__ import annotations

import torch

from hybridssl.config import resolve
from hybridssl.engine.train import budget_hint, run_plan
from hybridssl.methods import METHODS
from tests.methods.toy import build


def config(**flags):
    return resolve({"method": "mae", "dataset": "fashion-mnist", "model": "vit-pico", "batch_size": 256, **flags})


def test_the_plan_counts_images_tokens_and_optimizer_steps():
    mae = build("mae")
    assert run_plan(config(epochs=3), mae, 1000) == (
        "mae on 1,000 fashion-mnist images at 28 px (49 tokens of 4 px), global batch 256: 9 optimizer steps (3 per epoch)")
    assert run_plan(config(epochs=3, max_steps=1), mae, 1000).endswith(": 1 optimizer step (3 per epoch)")
    assert "global batch 512: 2 optimizer steps (2 per epoch)" in run_plan(config(epochs=1, devices=2), mae, 1100)


def test_a_run_shorter_than_the_measured_need_gets_a_note_scaled_to_its_data_and_batch(monkeypatch):
    mae = build("mae")
    monkeypatch.setattr(METHODS["mae"], "steps_to_beat_random_init", 1000)
    note = budget_hint(config(epochs=24), mae, 2560)  # 10 steps per epoch: 240 steps
    assert "about 1,000 optimizer steps at batch 256" in note and "this run has 240" in note and "give it --epochs 100 or more" in note
    assert "--epochs 2 or more" in budget_hint(config(epochs=1), mae, 600 * 256)  # a big dataset needs fewer epochs
    assert "give it --max-steps 1000 or more" in budget_hint(config(epochs=200, max_steps=50), mae, 2560)
    assert "give it --epochs 100 and --max-steps 1000 or more" in budget_hint(config(epochs=1, max_steps=5), mae, 2560)
    assert budget_hint(config(epochs=100), mae, 2560) is None, "1,000 steps are enough"
    # the same images at another global batch: 4x the batch needs a quarter of the steps, 1/8 needs 8x
    assert budget_hint(config(epochs=250, batch_size=1024), mae, 10240) is None  # 10 steps x 250 = 2,500 >= 250
    assert "250 at this run's batch of 1,024" in budget_hint(config(epochs=20, batch_size=1024), mae, 10240)
    assert "500 at this run's batch of 512; this run has 10" in budget_hint(config(epochs=1, batch_size=128, devices=2, accumulate_grad_batches=2), mae, 5120)
    assert "8,000 at this run's batch of 32; this run has 1" in budget_hint(config(batch_size=32, max_steps=1), mae, 512)


def test_pretrain_prints_its_plan_and_the_note_before_training(fmnist_dir, tmp_path, capsys):
    from hybridssl.cli import main

    args = ["pretrain", "--method", "mae", "--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir), "--model", "vit-pico",
            "--batch-size", "32", "--max-steps", "1", "--accelerator", "cpu", "--no-progress-bar", "--output", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    plan = "hybridssl: mae on 512 fashion-mnist images at 28 px (49 tokens of 4 px), global batch 32: 1 optimizer step (16 per epoch)"
    assert plan in out
    needed = METHODS["mae"].steps_to_beat_random_init * 256 // 32
    assert f"this run has 1: for features worth evaluating, give it --max-steps {needed} or more" in out


def test_devices_auto_counts_cuda_devices_only_for_a_cuda_run(monkeypatch):
    """On a 4-GPU host, --accelerator cpu --devices auto is one process (Lightning's count), not four."""
    from hybridssl.engine.train import global_batch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    cpu = resolve({"method": "mae", "accelerator": "cpu", "devices": "auto", "batch_size": 32})
    gpu = resolve({"method": "mae", "accelerator": "gpu", "devices": "auto", "batch_size": 32})
    assert (global_batch(cpu), global_batch(gpu)) == (32, 128)
