"""keep_checkpoints prunes the oldest periodic checkpoints, also across a resume; DiskRoom warns
before the first step when the checkpoints to come will not fit."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from hybridssl.engine import callbacks
from hybridssl.engine.callbacks import checkpoint_bytes, disk_room_warning, rebased_checkpoint_paths
from hybridssl.weights.ours import load_checkpoint
from tests.conftest import pretrain_tiny


def saved(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def test_keep_checkpoints_keeps_the_newest_and_a_resume_goes_on_pruning(fmnist_dir, tmp_path):
    every = ("--checkpoint-every-steps", "2", "--keep-checkpoints", "2")
    run = pretrain_tiny(fmnist_dir, tmp_path / "run", "mae", 6, *every)
    assert saved(run) == ["last.ckpt", "step0000004.ckpt", "step0000006.ckpt"]
    assert load_checkpoint(run / "checkpoints" / "step0000006.ckpt")["global_step"] == 6

    pretrain_tiny(fmnist_dir, run, "mae", 10, *every, "--resume")  # a longer budget, resumed
    assert saved(run) == ["last.ckpt", "step0000008.ckpt", "step0000010.ckpt"]


def test_a_resume_from_a_step_file_prunes_that_file_too(fmnist_dir, tmp_path):
    """A killed run (no last.ckpt) resumes from its newest step file; once newer files exist that one goes
    like any other. Lightning keeps the file a run resumed from, so each requeue left one more."""
    every = ("--checkpoint-every-steps", "2", "--keep-checkpoints", "2")
    run = pretrain_tiny(fmnist_dir, tmp_path / "run", "mae", 6, *every)
    (run / "checkpoints" / "last.ckpt").unlink()  # as if killed after step 6's save
    pretrain_tiny(fmnist_dir, run, "mae", 12, *every, "--resume")  # resumes from step0000006.ckpt
    assert saved(run) == ["last.ckpt", "step0000010.ckpt", "step0000012.ckpt"]


def test_a_checkpoint_resumed_from_outside_the_run_folder_is_never_removed(tmp_path):
    from types import SimpleNamespace

    from hybridssl.engine.callbacks import RollingCheckpoint

    keep = RollingCheckpoint(dirpath=tmp_path / "run" / "checkpoints", monitor="step", mode="max", save_top_k=2)
    elsewhere = str(tmp_path / "other" / "step0000006.ckpt")
    own = str(tmp_path / "run" / "checkpoints" / "step0000006.ckpt")
    new = str(tmp_path / "run" / "checkpoints" / "step0000010.ckpt")
    assert not keep._should_remove_checkpoint(SimpleNamespace(ckpt_path=elsewhere), elsewhere, new)
    assert keep._should_remove_checkpoint(SimpleNamespace(ckpt_path=own), own, new)
    assert not keep._should_remove_checkpoint(SimpleNamespace(ckpt_path=own), own, own)
    assert keep.state_key.startswith("ModelCheckpoint{")  # checkpoints written before keep their pruning list


def test_without_keep_every_checkpoint_stays(fmnist_dir, tmp_path):
    run = pretrain_tiny(fmnist_dir, tmp_path / "run", "mae", 6, "--checkpoint-every-steps", "2")
    assert saved(run) == ["last.ckpt", "step0000002.ckpt", "step0000004.ckpt", "step0000006.ckpt"]


def test_checkpoint_size_estimate_matches_a_written_checkpoint(fmnist_dir, tmp_path):
    """The estimate (state + AdamW's two moments per trainable weight) is within 10% of the real file."""
    seen: list[int] = []
    original = callbacks.checkpoint_bytes
    run = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(callbacks, "checkpoint_bytes", lambda m: seen.append(original(m)) or seen[-1])
        pretrain_tiny(fmnist_dir, run, "mae", 2, "--checkpoint-every-steps", "2")
    real = (run / "checkpoints" / "step0000002.ckpt").stat().st_size
    assert seen and abs(seen[0] - real) / real < 0.1, (seen, real)


def test_disk_room_warning_counts_kept_checkpoints_and_last():
    gb = 10**9
    assert disk_room_warning(gb, saves_left=9, keep=None, free=10 * gb, folder=Path("c")) is None  # 9 + last = 10 GB
    too_many = disk_room_warning(gb, saves_left=10, keep=None, free=10 * gb, folder=Path("c"))
    assert too_many is not None and "11.0 GB" in too_many and "10 periodic" in too_many and "keep_checkpoints" in too_many
    assert disk_room_warning(gb, saves_left=100, keep=3, free=4 * gb, folder=Path("c")) is None  # 3 kept + 1
    assert disk_room_warning(gb, saves_left=100, keep=4, free=4 * gb, folder=Path("c")) is not None
    assert disk_room_warning(gb, saves_left=0, keep=None, free=gb, folder=Path("c")) is None  # only last.ckpt


def test_a_run_that_will_not_fit_warns_before_its_first_step(fmnist_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(callbacks, "free_bytes", lambda folder: 1000)
    with pytest.warns(UserWarning, match=r"disk: .*last.ckpt.* keep fewer \(keep_checkpoints"):
        pretrain_tiny(fmnist_dir, tmp_path / "run", "mae", 2)
    monkeypatch.setattr(callbacks, "free_bytes", lambda folder: 10**12)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message="^(?!disk: )")
        pretrain_tiny(fmnist_dir, tmp_path / "run2", "mae", 2)


def test_checkpoint_bytes_counts_moments_of_trainable_weights_only():
    module = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.Linear(10, 10))  # 110 floats each
    module[0].requires_grad_(False)
    assert checkpoint_bytes(module) == 4 * (220 + 2 * 110)


def test_a_resume_with_another_checkpoint_frequency_says_the_old_files_stay(fmnist_dir, tmp_path):
    """In place of Lightning's request to pass the old ModelCheckpoint (which a user cannot), one warning
    names both plans; the files written before are kept, the new plan prunes only its own."""
    run = pretrain_tiny(fmnist_dir, tmp_path / "run", "mae", 4, "--checkpoint-every-steps", "2")
    with pytest.warns(UserWarning) as seen:
        pretrain_tiny(fmnist_dir, run, "mae", 9, "--checkpoint-every-steps", "3", "--keep-checkpoints", "1", "--resume")
    messages = [str(w.message) for w in seen]
    ours = [m for m in messages if m.startswith("resume: checkpoints were written")]
    assert len(ours) == 1, messages
    assert "every 2 steps, keeping all up to step 4" in ours[0] and "from here every 3 steps, keeping the newest ones" in ours[0]
    assert not [m for m in messages if "callbacks used to create the checkpoint" in m], messages
    assert saved(run) == ["last.ckpt", "step0000002.ckpt", "step0000004.ckpt", "step0000009.ckpt"]


def test_a_resume_with_the_same_checkpoint_settings_is_quiet(fmnist_dir, tmp_path):
    every = ("--checkpoint-every-steps", "2")
    run = pretrain_tiny(fmnist_dir, tmp_path / "run", "mae", 2, *every)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        pretrain_tiny(fmnist_dir, run, "mae", 4, *every, "--resume")
    assert not [w for w in seen if "checkpoints were written" in str(w.message) or "optimizer settings apply" in str(w.message)]


def test_checkpoint_plan_reads_lightning_state_keys_and_never_fails():
    from lightning.pytorch.callbacks import ModelCheckpoint

    from hybridssl.engine.callbacks import checkpoint_plan

    assert checkpoint_plan(ModelCheckpoint(every_n_train_steps=5, monitor="step").state_key) == "every 5 steps, keeping the newest ones"
    assert checkpoint_plan(ModelCheckpoint(every_n_epochs=2).state_key) == "every 2 epochs, keeping all"
    assert checkpoint_plan("ModelCheckpoint<something else>") == "ModelCheckpoint<something else>"


def test_a_moved_run_folder_resumes_with_its_pruning(fmnist_dir, tmp_path):
    """A run copied to another disk or machine and resumed there still prunes the files it wrote before."""
    every = ("--checkpoint-every-steps", "2", "--keep-checkpoints", "2")
    run = pretrain_tiny(fmnist_dir, tmp_path / "here" / "run", "mae", 6, *every)
    moved = tmp_path / "there" / "run"
    moved.parent.mkdir()
    run.rename(moved)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        pretrain_tiny(fmnist_dir, moved, "mae", 10, *every, "--resume")
    assert saved(moved) == ["last.ckpt", "step0000008.ckpt", "step0000010.ckpt"]
    assert not [w for w in seen if "dirpath has changed" in str(w.message)], [str(w.message) for w in seen]


def test_rebasing_moves_only_the_files_of_the_old_folder():
    state = {"dirpath": "/a/ckpt", "best_model_path": "/a/ckpt/step2.ckpt", "kth_best_model_path": "/a/ckpt/step1.ckpt",
             "last_model_path": "", "best_k_models": {"/a/ckpt/step1.ckpt": 1, "/elsewhere/x.ckpt": 0}, "kth_value": 1}  # fmt: skip
    moved = rebased_checkpoint_paths(state, "/b/ckpt")
    assert moved["dirpath"] == "/b/ckpt" and moved["best_model_path"] == "/b/ckpt/step2.ckpt"
    assert moved["kth_best_model_path"] == "/b/ckpt/step1.ckpt" and moved["last_model_path"] == "" and moved["kth_value"] == 1
    assert moved["best_k_models"] == {"/b/ckpt/step1.ckpt": 1, "/elsewhere/x.ckpt": 0}
    assert rebased_checkpoint_paths(state, "/a/ckpt") is state and state["dirpath"] == "/a/ckpt"
