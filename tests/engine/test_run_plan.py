"""The plan line `pretrain` prints before training, and the note it adds when the budget is shorter than
the method was measured to need."""

from __future__ import annotations

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


def test_a_run_shorter_than_the_measured_need_gets_a_note_in_steps_scaled_to_the_data(monkeypatch):
    mae = build("mae")
    monkeypatch.setattr(METHODS["mae"], "steps_to_beat_random_init", 1000)
    note = budget_hint(config(epochs=24), mae, 2560)  # 10 steps per epoch: 240 steps
    assert "about 1,000 optimizer steps" in note and "this run has 240" in note and "--epochs 100 or more" in note
    assert "--epochs 2 or more" in budget_hint(config(epochs=1), mae, 600 * 256)  # a big dataset needs fewer epochs
    assert "--max-steps 1000 or more" in budget_hint(config(epochs=24, max_steps=50), mae, 2560)
    assert budget_hint(config(epochs=100), mae, 2560) is None, "1,000 steps are enough"


def test_pretrain_prints_its_plan_and_the_note_before_training(fmnist_dir, tmp_path, capsys):
    from hybridssl.cli import main

    args = ["pretrain", "--method", "mae", "--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir), "--model", "vit-pico",
            "--batch-size", "32", "--max-steps", "1", "--accelerator", "cpu", "--no-progress-bar", "--output", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    plan = "hybridssl: mae on 512 fashion-mnist images at 28 px (49 tokens of 4 px), global batch 32: 1 optimizer step (16 per epoch)"
    assert plan in out
    assert f"this run has 1: for features worth evaluating, give it --max-steps {METHODS['mae'].steps_to_beat_random_init}" in out
