"""Bad input through the CLI: one stderr line `hybridssl: error: ...` naming the field or file, exit
status 2, no traceback; unreadable images skipped with a warning naming each; NaN stops the run and
keeps the last good checkpoint."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hybridssl.cli import main
from hybridssl.weights.ours import load_checkpoint
from hybridssl.methods.mae import MAE
from tests.subprocess_runs import threads

CPU = ["--accelerator", "cpu", "--no-progress-bar", "--model", "vit-pico", "--seed", "2"]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with threads():  # fast on a busy machine (tests/subprocess_runs.py)
        yield


def tiny(data_dir: Path, output: Path, *extra: str, method: str = "mae") -> list[str]:
    return ["pretrain", "--method", method, *CPU, "--batch-size", "16", "--limit-train", "64", "--data-dir", str(data_dir),
            "--output", str(output), *extra]  # fmt: skip


def one_line_error(capsys, args: list[str]) -> str:
    """Runs the CLI, expects exit status 2 and exactly one stderr line; returns it."""
    code = main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("hybridssl: error: ")
    return lines[0]


@pytest.fixture(scope="module")
def mae_run(fmnist_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mae")
    with threads():
        assert main(tiny(fmnist_dir, out, "--max-steps", "2")) == 0
    return out


# ----------------------------------------------------------------------------- data


def test_missing_empty_and_unreadable_folders(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"")
    folder = ["--dataset", "folder", "--max-steps", "1"]
    line = one_line_error(capsys, tiny(tmp_path / "missing", tmp_path / "o1", *folder))
    assert "missing" in line and "does not exist" in line
    line = one_line_error(capsys, tiny(tmp_path / "empty", tmp_path / "o2", *folder))
    assert "empty" in line and "contains no images" in line
    with pytest.warns(UserWarning) as caught:
        line = one_line_error(capsys, tiny(tmp_path / "broken", tmp_path / "o3", *folder))
    assert "no readable images" in line and "broken" in line and any("a.png" in str(w.message) for w in caught)
    line = one_line_error(capsys, ["pretrain", "--method", "mae", *CPU, "--dataset", "folder", "--output", str(tmp_path / "o4")])
    assert "--data-dir" in line
    # a mistyped --data-dir of a named dataset does not fall back to a copy found elsewhere
    line = one_line_error(capsys, tiny(tmp_path / "typo", tmp_path / "o5", "--max-steps", "1"))
    assert line == f"hybridssl: error: data_dir: {tmp_path / 'typo'} does not exist"


def write_mixed_folder(root: Path) -> list[str]:
    """40 ordinary images, the unusual kinds of image that must be converted, three broken files."""
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / f"ok{i:02d}.png")
    rgb = Image.fromarray(rng.integers(0, 255, (10, 14, 3), dtype=np.uint8))
    rgb.convert("CMYK").save(root / "cmyk.jpg")
    Image.new("RGBA", (16, 16), (0, 255, 0, 128)).save(root / "rgba.png")
    rgb.convert("P").save(root / "palette.png")
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(root / "deep16.png")
    Image.new("L", (1, 1), 7).save(root / "one_pixel.png")
    Image.new("RGB", (200, 3), (1, 2, 3)).save(root / "wide.png")
    (root / "zero.png").write_bytes(b"")
    (root / "text.jpg").write_text("not an image")
    good = (root / "ok00.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    return ["zero.png", "text.jpg", "truncated.png"]


def test_unreadable_images_are_skipped_by_name_unusual_ones_converted(tmp_path, capsys):
    data = tmp_path / "images"
    data.mkdir()
    broken = write_mixed_folder(data)
    args = tiny(data, tmp_path / "run", "--dataset", "folder", "--image-size", "16", "--max-steps", "1", "--batch-size", "8")
    with pytest.warns(UserWarning) as caught:
        assert main(args) == 0
    messages = [str(w.message) for w in caught]
    for name in broken:
        assert any(name in m and "skipping unreadable image" in m for m in messages), name
    assert messages[-1].startswith("skipped 3 of 49 images"), messages[-1]
    line = one_line_error(capsys, args[:-4] + ["--strict", "--output", str(tmp_path / "strict")])
    assert "3 unreadable image(s)" in line and any(name in line for name in broken)


def test_dataset_smaller_than_the_queue_or_queue_smaller_than_a_batch(fmnist_dir, tmp_path, capsys):
    line = one_line_error(capsys, tiny(fmnist_dir, tmp_path / "a", "--max-steps", "1", "--limit-train", "40", method="toy-queue-ema"))
    assert line.startswith("hybridssl: error: method_args.queue_size:") and "48" in line and "40 training images" in line
    small_queue = tiny(fmnist_dir, tmp_path / "b", "--max-steps", "1", "--set", "method_args.queue_size=8", method="toy-queue-ema")
    line = one_line_error(capsys, small_queue)
    assert "method_args.queue_size" in line and "global batch (16)" in line


@pytest.mark.parametrize("method", ["nnclr", "mae-ct-tune", "macrl"])
def test_registered_queue_methods_check_the_queue_against_the_data(method, fmnist_dir, tmp_path, capsys):
    line = one_line_error(capsys, tiny(fmnist_dir, tmp_path, "--max-steps", "1", "--set", "method_args.queue_size=65", method=method))
    assert "method_args.queue_size" in line and "64" in line


# ----------------------------------------------------------------------------- names and numbers


@pytest.mark.parametrize(
    "extra, field",
    [
        (["--model", "vit-gigantic"], "model"),
        (["--dataset", "imagenet22k"], "dataset"),
        (["--max-steps", "1.5"], "--max-steps"),
        (["--max-steps", "0"], "max_steps"),
        (["--lr", "abc"], "--lr"),
        (["--lr", "-1"], "optim.base_lr"),
        (["--lr", "nan"], "optim.base_lr"),
        (["--lr", "inf"], "optim.base_lr"),
        (["--devices", "two"], "--devices"),
        (["--checkpoint-every-steps", "-2"], "checkpoint_every_steps"),
        (["--set", "method_args.mask_ratio=1.5"], "method_args.mask_ratio"),
        (["--set", "method_args.decoder_dim=wide"], "method_args.decoder_dim"),
        (["--set", "optim.betas=[0.9, 1.5]"], "optim.betas"),
        (["--set", "optim.weight_decay=.inf"], "optim.weight_decay"),
        (["--set", "no_such_setting=1"], "no_such_setting"),
    ],
)
def test_invalid_names_and_numbers_in_flags(extra, field, tmp_path, capsys):
    line = one_line_error(capsys, ["pretrain", "--method", "mae", *CPU, "--output", str(tmp_path), *extra])
    assert field in line
    assert not tmp_path.exists() or not any(tmp_path.iterdir()), "nothing is written before the config is valid"


@pytest.mark.parametrize(
    "yaml_text, field",
    [
        ("method: mae\nbatch_size: -3\n", "batch_size"),
        ("method: mae\nepochs: ten\n", "epochs"),
        ("method: mae\noptim:\n  base_lr: .nan\n", "optim.base_lr"),
        ("method: mae\noptim:\n  warmup_fraction: 1.5\n", "optim.warmup_fraction"),
        ("method: mae\nmethod_args:\n  mask_ratio: 2\n", "method_args.mask_ratio"),
        ("method: mae\nbatch-size: 1e3\n", "batch_size"),  # YAML 1.1 reads 1e3 as a string
        ("method: mae\nmodel: [vit-pico]\n", "model"),
        ("method: mae\nbatch_size: 16\n  bad indent: 1\n", "config"),
        ("- just\n- a list\n", "config"),
    ],
)
def test_invalid_values_in_yaml(yaml_text, field, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml_text)
    line = one_line_error(capsys, ["pretrain", "--config", str(config), "--output", str(tmp_path / "out")])
    assert field in line and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- checkpoints


def test_resume_refuses_a_checkpoint_of_another_method_model_or_shape(mae_run, fmnist_dir, tmp_path, capsys):
    last = mae_run / "checkpoints" / "last.ckpt"
    before = sorted(p.name for p in mae_run.rglob("*"))
    line = one_line_error(capsys, tiny(fmnist_dir, mae_run, "--max-steps", "4", "--resume", "--model", "vit-tiny"))
    assert "resume: checkpoint" in line and "was trained with method mae / model vit-pico, this run is method mae / model vit-tiny" in line
    line = one_line_error(capsys, tiny(fmnist_dir, mae_run, "--max-steps", "4", "--resume", method="toy-queue-ema"))
    assert "was trained with method mae / model vit-pico, this run is method toy-queue-ema / model vit-pico" in line
    line = one_line_error(capsys, tiny(fmnist_dir, mae_run, "--max-steps", "4", "--resume", "--set", "method_args.decoder_dim=64"))
    assert "with other settings" in line and "decoder" in line
    assert sorted(p.name for p in mae_run.rglob("*")) == before and load_checkpoint(last)["global_step"] == 2


def test_an_existing_run_is_not_overwritten_without_resume(mae_run, fmnist_dir, capsys):
    line = one_line_error(capsys, tiny(fmnist_dir, mae_run, "--max-steps", "4"))
    assert f"output: {mae_run} already holds a run" in line and "--resume" in line and "--output" in line


def test_an_existing_staged_run_is_refused_before_its_files_are_touched(fmnist_dir, tmp_path, capsys):
    """MAE-CT wrote config.yaml and stages.yaml before its first stage found the old run: a report of the
    folder then described the refused command."""
    tune = tmp_path / "run" / "stage3-tune" / "checkpoints"
    tune.mkdir(parents=True)
    (tune / "last.ckpt").write_bytes(b"a run was here")
    (tmp_path / "run" / "config.yaml").write_text("the old run's\n")
    line = one_line_error(capsys, tiny(fmnist_dir, tmp_path / "run", "--max-steps", "2", method="mae-ct"))
    assert f"output: {tmp_path / 'run'} already holds a run (stage3-tune/checkpoints/last.ckpt)" in line
    assert (tmp_path / "run" / "config.yaml").read_text() == "the old run's\n" and not (tmp_path / "run" / "stages.yaml").exists()
    plain = tmp_path / "plain" / "checkpoints"  # a plain run where a staged one is asked for
    plain.mkdir(parents=True)
    (plain / "last.ckpt").write_bytes(b"a run was here")
    line = one_line_error(capsys, tiny(fmnist_dir, tmp_path / "plain", "--max-steps", "2", method="mae-ct"))
    assert "already holds a run (checkpoints/last.ckpt)" in line and not (tmp_path / "plain" / "config.yaml").exists()


def test_init_from_a_checkpoint_of_another_model(mae_run, fmnist_dir, tmp_path, capsys):
    last = mae_run / "checkpoints" / "last.ckpt"
    line = one_line_error(capsys, tiny(fmnist_dir, tmp_path, "--max-steps", "1", "--model", "vit-tiny", "--init-from", str(last)))
    assert f"init_from: checkpoint {last} was trained with method mae / model vit-pico, this run is method mae / model vit-tiny" in line
    # another method with the same encoder is fine: that is what --init-from is for
    assert main(tiny(fmnist_dir, tmp_path / "ok", "--max-steps", "1", "--init-from", str(last), method="toy-queue-ema")) == 0


def test_files_that_are_not_checkpoints(mae_run, fmnist_dir, tmp_path, capsys):
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    evaluate = ["evaluate", "--protocol", "knn", "--data-dir", str(fmnist_dir), "--output", str(tmp_path / "eval")]
    for path, why in ((text, "is not a readable checkpoint"), (foreign, "is not a hybridssl checkpoint")):
        assert str(path) in one_line_error(capsys, [*evaluate, "--checkpoint", str(path)])
        line = one_line_error(capsys, tiny(fmnist_dir, tmp_path / "init", "--max-steps", "1", "--init-from", str(path)))
        assert str(path) in line and why in line
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(text, run / "checkpoints" / "last.ckpt")
    line = one_line_error(capsys, tiny(fmnist_dir, run, "--max-steps", "1", "--resume"))
    assert "last.ckpt is not a readable checkpoint" in line


def test_evaluate_a_checkpoint_whose_weights_do_not_match_its_metadata(mae_run, fmnist_dir, tmp_path, capsys):
    ckpt = torch.load(mae_run / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["hybridssl"]["encoder"]["embed_dim"] = 192  # says vit-tiny width, holds vit-pico weights
    doctored = tmp_path / "doctored.ckpt"
    torch.save(ckpt, doctored)
    evaluate = ["evaluate", "--checkpoint", str(doctored), "--protocol", "knn", "--data-dir", str(fmnist_dir), "--output", str(tmp_path)]
    line = one_line_error(capsys, evaluate)
    assert f"checkpoint {doctored}: its weights do not fit its recorded encoder settings" in line


# ----------------------------------------------------------------------------- NaN


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(fmnist_dir, tmp_path, capsys, monkeypatch):
    calls = []
    original = MAE.forward

    def poisoned(self, batch):
        losses = original(self, batch)
        calls.append(1)
        return {**losses, "loss": losses["loss"] * float("nan")} if len(calls) == 5 else losses

    monkeypatch.setattr(MAE, "forward", poisoned)
    line = one_line_error(capsys, tiny(fmnist_dir, tmp_path, "--max-steps", "8", "--checkpoint-every-steps", "2"))
    assert "the loss became nan at step 5" in line and "the last good checkpoint is" in line
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step0000002.ckpt", "step0000004.ckpt"], "last.ckpt is written only by a run that ends"
    last = load_checkpoint(tmp_path / "checkpoints" / "step0000004.ckpt")
    assert last["global_step"] == 4 and all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert "step0000004.ckpt" in line


def test_weights_that_become_non_finite_are_never_checkpointed(fmnist_dir, tmp_path, capsys, monkeypatch):
    steps = []

    def overflowing(self, progress):
        steps.append(1)
        if len(steps) == 4:  # the update of step 4 overflows although its loss was finite
            self.decoder.head.weight.data.fill_(float("inf"))

    monkeypatch.setattr(MAE, "after_step", overflowing)
    line = one_line_error(capsys, tiny(fmnist_dir, tmp_path, "--max-steps", "8", "--checkpoint-every-steps", "2"))
    assert "weights became non-finite" in line and "step 4" in line
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step0000002.ckpt"]
    assert load_checkpoint(tmp_path / "checkpoints" / "step0000002.ckpt")["global_step"] == 2


# ----------------------------------------------------------------------------- full disk


def test_a_full_disk_at_a_save_is_one_line_keeps_the_previous_checkpoint_and_resumes(fmnist_dir, tmp_path, capsys, monkeypatch):
    """The disk fills up while step 4's checkpoint is written (part of it on disk): one line naming the
    file and the intact previous checkpoint, not a traceback; the --resume it suggests ends the run."""
    save, saves = torch.save, []

    def disk_fills_up(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) == 2:
            f.write(b"\0" * 4096)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_fills_up)
    args = tiny(fmnist_dir, tmp_path, "--max-steps", "6", "--checkpoint-every-steps", "2")
    line = one_line_error(capsys, args)
    kept = tmp_path / "checkpoints" / "step0000002.ckpt"
    assert line == (f"hybridssl: error: disk full: {tmp_path / 'checkpoints' / 'step0000004.ckpt'} could not be written "
                    f"(No space left on device); the previous checkpoint {kept} is intact: free space on that disk (or keep "
                    "fewer checkpoints: --keep-checkpoints N) and continue with --resume")  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step0000002.ckpt"], "no temporary file left"
    assert load_checkpoint(kept)["global_step"] == 2
    monkeypatch.undo()  # room again
    assert main([*args, "--resume"]) == 0
    assert load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 6
