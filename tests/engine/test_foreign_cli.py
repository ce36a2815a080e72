"""A released MAE checkpoint through the CLI (docs/checkpoints.md, "Start from another checkpoint"): an
official-format file (timm's ViT-Ti/16 at 224 px, random weights, with a small decoder) is evaluated at 112 px,
tuned there with MAE-CT stages 2-3 (the model, patch size and normalization taken from the file) and
evaluated again with the same protocol; MAE continues with the file's decoder; contradicting flags are
one-line errors before any data is read."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import yaml
from timm.models.vision_transformer import Block

from hybridssl.cli import main
from hybridssl.data.synthetic import write_photo_folder
from hybridssl.weights.ours import load_checkpoint
from hybridssl.weights.released import IMAGENET_MEAN
from hybridssl.nn.pos_embed import resample_grid

CPU = ["--accelerator", "cpu", "--no-progress-bar", "--batch-size", "8"]


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """(official-format MAE file, its tensors, a train/ + val/ photo root)."""
    root = tmp_path_factory.mktemp("released")
    torch.manual_seed(0)
    encoder = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    state = {k: v for k, v in encoder.state_dict().items()}
    block = Block(128, 4, mlp_ratio=4, qkv_bias=True)
    state.update({"mask_token": torch.zeros(1, 1, 128), "decoder_pos_embed": torch.zeros(1, 197, 128),
                  "decoder_embed.weight": torch.randn(128, 192) * 0.02, "decoder_embed.bias": torch.zeros(128),
                  "decoder_norm.weight": torch.ones(128), "decoder_norm.bias": torch.zeros(128),
                  "decoder_pred.weight": torch.randn(768, 128) * 0.02, "decoder_pred.bias": torch.zeros(768)})  # fmt: skip
    state.update({f"decoder_blocks.0.{k}": v for k, v in block.state_dict().items()})
    path = root / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": state}, path)
    photos = write_photo_folder(root / "photos", 64, num_classes=3, sizes=(120, 160))
    return path, state, photos


def test_evaluate_tune_with_mae_ct_and_evaluate_again(released, tmp_path, capsys):
    path, state, photos = released
    out = tmp_path / "maect"
    evaluate = ["evaluate", "--protocol", "knn", "--k", "5", "--output", str(out)]
    assert main([*evaluate, "--checkpoint", str(path), "--dataset", "folder", "--data-dir", str(photos), "--image-size", "112"]) == 0
    assert "position embeddings resampled (14x14 -> 7x7 grid" in capsys.readouterr().out
    assert main(["pretrain", "--method", "mae-ct", "--init-from", str(path), "--dataset", "folder", "--data-dir", str(photos),
                 "--image-size", "112", *CPU, "--max-steps", "2", "--output", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "init_from: " + str(path) + " (official MAE format, vit-tiny/16 at 224 px): loaded the encoder (150 tensors)" in printed
    assert "left out: MAE decoder (mae-ct-head has none)" in printed and "ImageNet's mean/std" in printed
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["stage2-head", "stage3-tune"]
    for stage in ("stage2-head", "stage3-tune"):
        config = yaml.safe_load((out / stage / "config.yaml").read_text())
        assert (config["model"], config["patch_size"], config["image_size"]) == ("vit-tiny", 16, 112)
    head = load_checkpoint(out / "stage2-head" / "checkpoints" / "last.ckpt")
    assert head["hybridssl"]["data_info"]["mean"] == IMAGENET_MEAN  # the file's normalization, not the folder's
    weights = head["state_dict"]  # stage 2 trains the head only: the encoder is the file's
    assert torch.equal(weights["method.encoder.blocks.5.attn.qkv.weight"], state["blocks.5.attn.qkv.weight"])
    assert torch.allclose(weights["method.encoder.pos_embed"], resample_grid(state["pos_embed"], 7))
    assert main([*evaluate, "--checkpoint", str(out / "stage3-tune" / "checkpoints" / "last.ckpt")]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["method"] for r in rows] == ["official-mae", "mae-ct-tune"]
    assert rows[0]["pooling"] == rows[1]["pooling"] == "mean_patch" and rows[0]["test_size"] == rows[1]["test_size"]


def test_mae_continues_with_the_released_decoder(released, tmp_path, capsys):
    path, _, photos = released
    args = ["pretrain", "--method", "mae", "--init-from", str(path), "--dataset", "folder", "--data-dir", str(photos),
            "--image-size", "112", *CPU, "--max-steps", "1", "--output", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    assert "loaded the encoder (150 tensors) and the MAE decoder (20)" in capsys.readouterr().out
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())["method_args"]
    assert (config["decoder_dim"], config["decoder_depth"], config["decoder_heads"]) == (128, 1, 4)


def test_flags_that_contradict_the_file_are_one_line_errors(released, tmp_path, capsys):
    path, _, photos = released
    base = ["pretrain", "--method", "mae-ct", "--init-from", str(path), "--dataset", "folder", "--data-dir", str(photos),
            *CPU, "--output", str(tmp_path / "out")]  # fmt: skip
    for flags, message in (
        (["--model", "vit-small"], "model: " + str(path) + " is a vit-tiny (embed_dim 192), --model vit-small has embed_dim 384"),
        (["--patch-size", "8"], "patch_size: " + str(path) + " has 16 px patches, the run asks for 8"),
        (["--channels", "1"], "channels: " + str(path) + " takes 3-channel images, --channels give 1"),
    ):
        assert main(base + flags) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_published_file_on_a_named_dataset_at_its_size(fmnist_dir, tmp_path, capsys):
    """A 1-channel timm ViT (32 px, patch 4) on the Fashion-MNIST fixture: the 28 px images need
    --image-size 28, which the error says; then it runs with timm's ViT default statistics (0.5 per channel)."""
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=32, patch_size=4, in_chans=1,
                              embed_dim=128, depth=6, num_heads=4)  # fmt: skip
    path = tmp_path / "grey.pth"
    torch.save(model.state_dict(), path)
    evaluate = ["evaluate", "--checkpoint", str(path), "--protocol", "knn", "--k", "5", "--dataset", "fashion-mnist",
                "--data-dir", str(fmnist_dir), "--output", str(tmp_path / "eval")]  # fmt: skip
    assert main(evaluate) == 2
    assert "the encoder expects (1, 32, 32); evaluate with --image-size 28" in capsys.readouterr().err
    assert main([*evaluate, "--image-size", "28"]) == 0
    assert "timm's ViT default mean/std 0.5/0.5; the file records none: --mean/--std set others (averaged over channels)" in capsys.readouterr().out
    row = json.loads((tmp_path / "eval" / "results.jsonl").read_text().splitlines()[0])
    assert (row["method"], row["model"], row["pooling"]) == ("timm", "vit-pico", "cls")
