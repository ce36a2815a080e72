"""End to end through the public CLI, on a tiny Fashion-MNIST-format fixture."""

import json
import re
import shutil

import pytest
import timm
import torch

from hybridssl.cli import main
from hybridssl.weights.loading import load_trained_encoder as load_encoder
from hybridssl.weights.ours import load_checkpoint
from hybridssl.nn.vit import pool

TINY = ["--dataset", "fashion-mnist", "--model", "vit-pico", "--batch-size", "32", "--accelerator", "cpu", "--no-progress-bar"]


@pytest.fixture(scope="module")
def mae_run(fmnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("mae")
    args = ["pretrain", "--method", "mae", *TINY, "--data-dir", str(fmnist_dir), "--max-steps", "8",
            "--checkpoint-every-steps", "4", "--seed", "3", "--output", str(out), "--set", "log_every_n_steps=2"]  # fmt: skip
    assert main(args) == 0
    return out, args


def test_pretrain_writes_checkpoints_config_and_logs(mae_run):
    out, _ = mae_run
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step0000004.ckpt", "step0000008.ckpt"]
    assert (out / "config.yaml").is_file() and (out / "logs" / "csv" / "metrics.csv").is_file()
    assert any((out / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    ckpt = load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 8 and ckpt["hybridssl"]["config"]["method"] == "mae"


def test_evaluate_knn_linear_random_and_pixels(mae_run, fmnist_dir, tmp_path):
    out, _ = mae_run
    ckpt = str(out / "checkpoints" / "last.ckpt")
    common = ["evaluate", "--checkpoint", ckpt, "--data-dir", str(fmnist_dir), "--output", str(tmp_path)]
    assert main([*common, "--protocol", "knn", "--k", "5,20"]) == 0
    assert main([*common, "--protocol", "knn", "--random-init", "--k", "20"]) == 0
    assert main([*common, "--protocol", "linear", "--epochs", "2", "--raw-pixels"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [(r["protocol"], r["encoder"]) for r in rows] == [
        ("knn", "trained"), ("knn", "trained"), ("knn", "random-init"), ("linear", "raw-pixels")
    ]
    assert rows[0]["settings"]["k"] == 5 and rows[1]["settings"]["k"] == 20
    for r in rows:
        assert {"method", "checkpoint", "dataset", "train_size", "test_size", "pooling", "metric", "value", "wall_seconds"} <= r.keys()
        assert r["train_size"] == 512 and r["test_size"] == 128 and 0 <= r["value"] <= 100
    assert rows[-1]["value"] > 90, "the toy classes are linearly separable in pixel space"


def test_export_loads_in_timm_with_the_same_features(mae_run, tmp_path, capsys):
    out, _ = mae_run
    path = tmp_path / "encoder.safetensors"
    assert main(["export", "--checkpoint", str(out / "checkpoints" / "last.ckpt"), "--output", str(path)]) == 0
    encoder, *_ = load_encoder(out / "checkpoints" / "last.ckpt")
    kwargs = encoder.cfg.timm_kwargs()
    model = timm.create_model("vit_base_patch16_224", pretrained=False, checkpoint_path=str(path), **kwargs).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        ours = encoder(x)
        theirs = model.forward_features(x)
        assert torch.allclose(ours, theirs, atol=1e-5)
        assert torch.allclose(model(x), pool(ours, "cls"), atol=1e-5)


def test_resume_from_a_mid_run_checkpoint_ends_with_identical_weights(mae_run, tmp_path):
    out, args = mae_run
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(out / "checkpoints" / "step0000004.ckpt", tmp_path / "checkpoints" / "last.ckpt")
    resumed = [a if a != str(out) else str(tmp_path) for a in args] + ["--resume"]
    assert main(resumed) == 0
    full = load_checkpoint(out / "checkpoints" / "last.ckpt")
    again = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert again["global_step"] == 8
    assert full["state_dict"].keys() == again["state_dict"].keys()
    for key, value in full["state_dict"].items():
        assert torch.equal(value, again["state_dict"][key]), key


def test_config_errors_are_one_line_without_traceback(capsys, fmnist_dir, tmp_path):
    assert main(["pretrain", "--method", "nope", "--output", str(tmp_path)]) == 2
    assert main(["pretrain", "--method", "mae", "--batch-size", "-3"]) == 2
    assert main(["pretrain", "--method", "mae", "--batch-size", "many"]) == 2
    assert main(["pretrain", "--method", "mae", "--dataset", "folder", "--data-dir", str(tmp_path / "x"), "--output", str(tmp_path)]) == 2
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none.ckpt"), "--protocol", "knn", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5 and all(line.startswith("hybridssl: error:") for line in err)
    assert "method" in err[0] and "batch_size" in err[1] and "--batch-size" in err[2]
    assert "does not exist" in err[3] and "none.ckpt" in err[4]


def test_dataset_smaller_than_a_batch(fmnist_dir, tmp_path, capsys):
    code = main(["pretrain", "--method", "mae", *TINY, "--data-dir", str(fmnist_dir), "--limit-train", "10", "--max-steps", "1", "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "fewer than one global batch" in err and "batch_size" in err


def test_help_and_config_errors_answer_without_importing_torch():
    """`--help` and an invalid setting come back at once: nothing heavy is imported before the config is valid."""
    import subprocess
    import sys

    probe = ("import sys\nfrom hybridssl.cli import main\n"
             "for argv in (['--help'], ['--version'], ['pretrain', '--help'], ['pretrain', '--method', 'mae', '--batch-size', '-5']):\n"
             "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
             "heavy = sorted(m for m in ('torch', 'lightning', 'timm', 'kornia') if m in sys.modules)\n"
             "print('HEAVY', heavy)\n")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
    assert "batch_size: Input should be greater than 0" in out.stderr
    assert re.search(r"^hybridssl \d+\.\d+\.\d+ \(torch \d+\.\d+\.\d+\S*, torchvision .*; python 3\.\d+", out.stdout, re.M), out.stdout[-2000:]
