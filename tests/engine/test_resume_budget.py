"""A resume with other settings: a longer budget stretches the lr schedule to it, another global batch
(whose steps would count other units) is refused before training, the same one by accumulation is not."""

import csv

import pytest

from hybridssl.cli import main
from hybridssl.weights.ours import load_checkpoint
from tests.conftest import pretrain_tiny


def logged_lrs(run) -> dict[int, float]:
    lrs = {}
    for path in sorted((run / "logs" / "csv").glob("metrics*.csv")):
        for row in csv.DictReader(path.open()):
            column = next((c for c in row if c.startswith("lr-") and row[c]), None)
            if column is not None:
                lrs[int(row["step"])] = float(row[column])
    return lrs


def test_a_longer_budget_on_resume_follows_its_own_schedule(fmnist_dir, tmp_path):
    every = ("--checkpoint-every-steps", "2")
    straight = pretrain_tiny(fmnist_dir, tmp_path / "straight", "mae", 8, *every)
    run = pretrain_tiny(fmnist_dir, tmp_path / "run", "mae", 4, *every)
    with pytest.warns(UserWarning, match=r"trained towards 4 optimizer steps, this run's budget is 8: the lr schedule is stretched"):
        pretrain_tiny(fmnist_dir, run, "mae", 8, *every, "--resume")
    expected, resumed = logged_lrs(straight), logged_lrs(run)
    after = [step for step in expected if step >= 4]
    assert len(after) == 4 and [resumed[s] for s in after] == pytest.approx([expected[s] for s in after], rel=1e-6)
    assert all(resumed[s] > 0 for s in after), "not the old schedule's end (lr 0 past its 4 steps)"


def test_another_global_batch_is_refused_and_the_same_one_by_accumulation_resumes(fmnist_dir, tmp_path, capsys):
    run = pretrain_tiny(fmnist_dir, tmp_path / "run", "mae", 2, "--checkpoint-every-steps", "2")
    args = ["pretrain", "--method", "mae", "--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir), "--model", "vit-pico",
            "--max-steps", "3", "--accelerator", "cpu", "--no-progress-bar", "--output", str(run), "--resume"]  # fmt: skip
    assert main([*args, "--batch-size", "16"]) == 2
    error = capsys.readouterr().err
    assert "batch_size: the checkpoint was trained at a global batch of 32" in error and "this run's is 16" in error
    assert "--accumulate-grad-batches" in error
    assert main([*args, "--batch-size", "16", "--accumulate-grad-batches", "2"]) == 0


def test_a_changed_lr_on_resume_applies_from_there(fmnist_dir, tmp_path):
    """The checkpoint's optimizer holds its own peak lr; a resume with another base_lr follows the new
    one (as the official MAE code does), with a warning."""
    every = ("--checkpoint-every-steps", "2")
    doubled = ("--set", "optim.base_lr=0.0003", "--set", "optim.weight_decay=0.01")
    straight = pretrain_tiny(fmnist_dir, tmp_path / "straight", "mae", 8, *every, *doubled)
    run = pretrain_tiny(fmnist_dir, tmp_path / "run", "mae", 8, *every, "--max-steps", "4")
    with pytest.warns(UserWarning, match=r"trained with peak lr .*, this run has peak lr .* and \d+ more\): this run's optimizer settings apply from step 4"):
        pretrain_tiny(fmnist_dir, run, "mae", 8, *every, *doubled, "--resume")
    expected, resumed = logged_lrs(straight), logged_lrs(run)
    after = [step for step in expected if step >= 4]
    assert len(after) == 4 and [resumed[s] for s in after] == pytest.approx([expected[s] for s in after], rel=1e-6)
    decays = {group["weight_decay"] for group in load_checkpoint(run / "checkpoints" / "last.ckpt")["optimizer_states"][0]["param_groups"]}
    assert decays == {0.0, 0.01}  # the same settings resume quietly: test_checkpoint_retention.py


def test_another_grouping_of_the_weights_is_refused_with_the_sizes():
    """Other frozen blocks or layer decay regroup the weights; the optimizer state would not load."""
    from types import SimpleNamespace

    from hybridssl.engine.train import check_param_groups
    from hybridssl.errors import CheckpointError

    ckpt = {"optimizer_states": [{"param_groups": [{"params": [0, 1, 2]}, {"params": [3]}]}]}
    run = SimpleNamespace(optim=SimpleNamespace(weight_decay=0.05))
    same = SimpleNamespace(param_groups=lambda wd: [{"params": ["a", "b", "c"]}, {"params": ["d"]}])
    check_param_groups(ckpt, same, run, "resume")
    other = SimpleNamespace(param_groups=lambda wd: [{"params": ["a", "b"]}, {"params": ["c"]}, {"params": ["d"]}])
    with pytest.raises(CheckpointError, match=r"2 parameter groups of \[3, 1\] tensors, this run's 3 of \[2, 1, 1\]"):
        check_param_groups(ckpt, other, run, "resume")


def test_a_restored_optimizer_gets_this_runs_settings_in_every_group():
    """Groups of different lrs (layer decay), betas and weight decay: each put back, each change named."""
    import torch

    from hybridssl.engine.module import restore_group_settings

    weights = [torch.nn.Parameter(torch.zeros(2)) for _ in range(2)]
    optimizer = torch.optim.AdamW([{"params": [weights[0]], "lr": 0.1}, {"params": [weights[1]], "lr": 0.4}], betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    own = [{"initial_lr": 0.2, "weight_decay": 0.05, "betas": (0.9, 0.95)}, {"initial_lr": 0.4, "weight_decay": 0.05, "betas": (0.9, 0.999)}]
    changed = restore_group_settings(scheduler, own)
    assert scheduler.base_lrs == [0.2, 0.4]
    assert [(g["initial_lr"], g["weight_decay"], tuple(g["betas"])) for g in optimizer.param_groups] == [(0.2, 0.05, (0.9, 0.95)), (0.4, 0.05, (0.9, 0.999))]
    assert [c[1].split()[0] for c in changed] == ["peak", "weight_decay", "weight_decay", "betas"]  # group 1 keeps its lr
    assert restore_group_settings(scheduler, own) == []
