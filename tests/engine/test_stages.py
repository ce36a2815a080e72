"""MAE-CT's three stages through the CLI: chaining by checkpoint, frozen weights, --init-from, --resume."""

import os
import shutil

import pytest
import torch
import yaml

from hybridssl.cli import main
from hybridssl.weights.ours import load_checkpoint

TINY = ["--dataset", "fashion-mnist", "--model", "vit-pico", "--batch-size", "16", "--accelerator", "cpu", "--no-progress-bar"]
STAGES = ["stage1-mae", "stage2-head", "stage3-tune"]


def last(out, stage):
    return load_checkpoint(out / stage / "checkpoints" / "last.ckpt")


def encoder_state(ckpt):
    return {k: v for k, v in ckpt["state_dict"].items() if k.startswith("method.encoder.")}


@pytest.fixture(scope="module")
def maect_run(fmnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("maect")
    args = ["pretrain", "--method", "mae-ct", *TINY, "--data-dir", str(fmnist_dir), "--max-steps", "4",
            "--checkpoint-every-steps", "2", "--seed", "5", "--output", str(out)]  # fmt: skip
    assert main(args) == 0
    return out, args


def test_three_stages_each_a_run_of_its_own(maect_run):
    out, _ = maect_run
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == STAGES
    assert yaml.safe_load((out / "config.yaml").read_text())["method"] == "mae-ct"
    previous = None
    for stage, method in zip(STAGES, ["mae", "mae-ct-head", "mae-ct-tune"]):
        config = yaml.safe_load((out / stage / "config.yaml").read_text())
        assert config["method"] == method and config["max_steps"] == 4
        assert config["init_from"] == (str(previous) if previous else None)
        ckpt = last(out, stage)
        assert ckpt["global_step"] == 4 and ckpt["hybridssl"]["finished"] is True
        assert (out / stage / "logs" / "csv").is_dir()
        previous = out / stage / "checkpoints" / "last.ckpt"
    tune = yaml.safe_load((out / "stage3-tune" / "config.yaml").read_text())["method_args"]
    assert tune["queue_size"] == 512 // 4 and tune["topk"] == 5 and tune["frozen_blocks"] == 3  # resolved, recorded
    assert yaml.safe_load((out / "stage2-head" / "config.yaml").read_text())["optim"]["weight_decay"] == 1e-5


def test_chained_stages_keep_the_frozen_weights(maect_run):
    out, _ = maect_run
    mae, head, tune = (last(out, s) for s in STAGES)
    for key, value in encoder_state(mae).items():  # stage 2 trains the head only
        assert torch.equal(value, head["state_dict"][key]), key
    lower = ("patch_embed", "cls_token", "pos_embed", "blocks.0.", "blocks.1.", "blocks.2.")
    for key, value in encoder_state(head).items():
        same = torch.equal(value, tune["state_dict"][key])
        assert same == key.removeprefix("method.encoder.").startswith(lower), key
    assert any(k.startswith("method.target_projector.") for k in tune["state_dict"])


def test_resume_skips_finished_stages_and_resumes_the_unfinished_one(maect_run, tmp_path):
    out, args = maect_run
    shutil.copytree(out, tmp_path, dirs_exist_ok=True)
    ckpts = tmp_path / "stage3-tune" / "checkpoints"
    shutil.copy(ckpts / "step0000002.ckpt", ckpts / "last.ckpt")  # stage 3 interrupted after step 2
    (ckpts / "step0000004.ckpt").unlink()
    finished = {s: os.stat(tmp_path / s / "checkpoints" / "last.ckpt").st_mtime_ns for s in STAGES[:2]}
    assert main([a if a != str(out) else str(tmp_path) for a in args] + ["--resume"]) == 0
    for stage, mtime in finished.items():
        assert os.stat(tmp_path / stage / "checkpoints" / "last.ckpt").st_mtime_ns == mtime, stage
    full, again = last(out, "stage3-tune"), last(tmp_path, "stage3-tune")
    assert again["global_step"] == 4 and full["state_dict"].keys() == again["state_dict"].keys()
    for key, value in full["state_dict"].items():
        assert torch.equal(value, again["state_dict"][key]), key


def test_init_from_an_mae_checkpoint_runs_stages_two_and_three(maect_run, fmnist_dir, tmp_path):
    out, _ = maect_run
    mae = out / "stage1-mae" / "checkpoints" / "last.ckpt"
    args = ["pretrain", "--method", "mae-ct-aug", *TINY, "--data-dir", str(fmnist_dir), "--max-steps", "2",
            "--init-from", str(mae), "--output", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == STAGES[1:]
    head = last(tmp_path, "stage2-head")
    for key, value in encoder_state(load_checkpoint(mae)).items():
        assert torch.equal(value, head["state_dict"][key]), key
    assert head["hybridssl"]["config"]["init_from"] == str(mae)
    assert last(tmp_path, "stage3-tune")["hybridssl"]["config"]["method_args"]["augment"] == "byol"


def test_a_late_stage_setting_fails_before_the_first_stage_trains(fmnist_dir, tmp_path, capsys):
    args = ["pretrain", "--method", "mae-ct", *TINY, "--data-dir", str(fmnist_dir), "--max-steps", "2",
            "--set", "method_args.queue_size=100000", "--output", str(tmp_path)]  # fmt: skip
    assert main(args) == 2
    assert "method_args.queue_size: 100000 exceeds the 512 training images" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_a_kill_between_the_final_step_checkpoint_and_last_ckpt_resumes_to_a_finished_run(fmnist_dir, tmp_path):
    """The periodic save at the budget's last step came, last.ckpt did not: a resume has nothing left to
    train, and must still leave the finished last.ckpt that a next stage starts from."""
    from hybridssl.engine.stages import finished
    from tests.conftest import pretrain_tiny

    every = ("--checkpoint-every-steps", "2")
    run = pretrain_tiny(fmnist_dir, tmp_path / "run", "mae", 4, *every)
    (run / "checkpoints" / "last.ckpt").unlink()  # the kill
    pretrain_tiny(fmnist_dir, run, "mae", 4, *every, "--resume")
    last = run / "checkpoints" / "last.ckpt"
    assert finished(last) and load_checkpoint(last)["global_step"] == 4
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt", "step0000002.ckpt", "step0000004.ckpt"]


def test_a_stale_last_ckpt_of_a_shorter_budget_gives_way_to_the_finished_step_checkpoint(fmnist_dir, tmp_path):
    """Budget 4 (last.ckpt at 4), extended to 6, killed after step 6's checkpoint: the old last.ckpt is
    still there, finished for its own budget; the resume must not keep it as the final one."""
    from hybridssl.engine.stages import finished
    from tests.conftest import pretrain_tiny

    every = ("--checkpoint-every-steps", "2")
    run = pretrain_tiny(fmnist_dir, tmp_path / "run", "mae", 4, *every)
    stale = (run / "checkpoints" / "last.ckpt").read_bytes()
    pretrain_tiny(fmnist_dir, run, "mae", 6, *every, "--resume")
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(stale)  # the kill came after step 6's checkpoint, before last.ckpt
    os.utime(last, (1, 1))  # older than step 6's, as it was
    pretrain_tiny(fmnist_dir, run, "mae", 6, *every, "--resume")
    assert finished(last) and load_checkpoint(last)["global_step"] == 6


@pytest.mark.parametrize(("node_rank", "nodes"), [("0", "2"), ("1", "2"), ("1", "1")])
def test_under_a_node_rank_launch_only_node_0_writes_before_the_trainer(fmnist_dir, tmp_path, monkeypatch, node_rank, nodes):
    """The same command on every node with NODE_RANK set (Lightning's multi-node launch, no torchrun):
    node 1's first process has no rank variable and, until the Trainer, must not write the run's files.
    A one-node run that inherited a NODE_RANK is rank 0 (nothing would reset it later)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from hybridssl.engine import stages
    from hybridssl.engine.train import RANK_VARIABLES

    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NODE_RANK", node_rank)
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    monkeypatch.setattr(stages, "train_run", lambda *args, **kwargs: None)  # up to the Trainer only
    out = tmp_path / "run"
    args = ["pretrain", "--method", "mae-ct", *TINY, "--data-dir", str(fmnist_dir), "--max-steps", "2", "--num-nodes", nodes]
    assert main([*args, "--output", str(out)]) == 0
    other_node = node_rank == "1" and nodes == "2"
    written = sorted(p.name for p in out.iterdir() if p.is_file()) if out.exists() else []  # (stage folders: locked, left)
    assert written == ([] if other_node else ["config.yaml", "stages.yaml"])
    assert out.exists() != other_node, "node 1 does not even lock the folder (its node 0 does)"
    assert (rank_zero_only.rank == 0) == (not other_node)


def test_a_resume_refused_by_a_later_stage_leaves_the_run_files_alone(maect_run, tmp_path, capsys):
    """Stage 3 was interrupted; a resume with another global batch is refused before config.yaml and
    stages.yaml are rewritten. Finished stages are not checked: with stage 3 not begun, the same
    resume starts it from stage 2 at the new batch."""
    out, args = maect_run
    shutil.copytree(out, tmp_path, dirs_exist_ok=True)
    ckpts = tmp_path / "stage3-tune" / "checkpoints"
    (ckpts / "last.ckpt").unlink()  # stage 3 interrupted after step 4's save
    before = {name: (tmp_path / name).read_bytes() for name in ("config.yaml", "stages.yaml")}
    resumed = [a if a != str(out) else str(tmp_path) for a in args] + ["--resume", "--batch-size", "8"]
    assert main(resumed) == 2
    assert "batch_size: the checkpoint was trained at a global batch of 16" in capsys.readouterr().err
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    shutil.rmtree(tmp_path / "stage3-tune")
    assert main(resumed) == 0
    assert last(tmp_path, "stage3-tune")["callbacks"]["DataPosition"]["global_batch"] == 8
