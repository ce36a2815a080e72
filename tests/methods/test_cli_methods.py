"""Each contrastive baseline trains from the CLI for a few steps; contrastive tuning on another encoder."""

import json

import pytest
import torch
import yaml

from hybridssl.cli import main
from hybridssl.weights.ours import load_checkpoint

TINY = ["--dataset", "fashion-mnist", "--model", "vit-pico", "--batch-size", "16", "--accelerator", "cpu", "--no-progress-bar"]


def pretrain(method, fmnist_dir, out, *extra):
    args = ["pretrain", "--method", method, *TINY, "--data-dir", str(fmnist_dir), "--max-steps", "2", "--output", str(out), *extra]
    assert main(args) == 0
    return out / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("method", ["simclr", "mocov3", "nnclr"])
def test_baseline_trains_from_the_cli(method, fmnist_dir, tmp_path):
    ckpt = load_checkpoint(pretrain(method, fmnist_dir, tmp_path, "--set", "log_every_n_steps=1"))
    assert ckpt["global_step"] == 2 and ckpt["hybridssl"]["config"]["method"] == method
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert all(v is not None for k, v in config["method_args"].items() if k.endswith("_dim"))  # auto widths recorded
    rows = (tmp_path / "logs" / "csv" / "metrics.csv").read_text().splitlines()
    assert "train/loss" in rows[0] and len(rows) >= 3
    if method == "nnclr":
        assert "train/nn_acc" in rows[0]


def test_contrastive_tuning_on_top_of_another_encoder(fmnist_dir, tmp_path):
    simclr = pretrain("simclr", fmnist_dir, tmp_path / "simclr")
    tuned = pretrain("mae-ct-tune", fmnist_dir, tmp_path / "tune", "--init-from", str(simclr))
    before, after = load_checkpoint(simclr)["state_dict"], load_checkpoint(tuned)["state_dict"]
    key = "method.encoder.blocks.0.attn.qkv.weight"  # a frozen lower block: the SimCLR weights
    assert torch.equal(before[key], after[key])
    assert main(["evaluate", "--checkpoint", str(tuned), "--data-dir", str(fmnist_dir), "--protocol", "knn",
                 "--limit-train", "128", "--limit-test", "64", "--output", str(tmp_path)]) == 0  # fmt: skip
    result = json.loads((tmp_path / "results.jsonl").read_text().splitlines()[-1])
    assert result["pooling"] == "mean_patch" and result["method"] == "mae-ct-tune"  # MAE-CT's pooling
