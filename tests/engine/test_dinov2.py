"""DINOv2-style encoders as starting points (layer scale, register tokens, patch 14): the official release
format and timm's DINOv2 state dicts, built here from timm's models at random init (no network), give
timm's features through hybridssl at another image size; every method continues from them; exports
reload in timm; a plain ViT checkpoint written before layer scale and registers existed loads as it did.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import checkpoint_filter_fn

import hybridssl
from hybridssl.cli import main
from hybridssl.data.sources import DataInfo
from hybridssl.errors import CheckpointError, ConfigError
from hybridssl.methods import METHODS
from hybridssl.nn.vit import ViT, pool, vit_config
from hybridssl.weights.export import export_encoder
from hybridssl.weights.init_from import init_from_checkpoint
from hybridssl.weights.loading import load_trained_encoder
from hybridssl.weights.ours import load_checkpoint
from hybridssl.weights.released import IMAGENET_MEAN, IMAGENET_STD
from hybridssl.weights.start import init_defaults

TIMM_NAMES = {True: "vit_small_patch14_reg4_dinov2", False: "vit_small_patch14_dinov2"}
WIDTH = 384


@functools.lru_cache(maxsize=4)
def dinov2_timm(registers: bool, img_size: int = 518, seed: int = 0) -> torch.nn.Module:
    """timm's DINOv2 ViT-S/14 at random init, its layer scale drawn away from the 1e-5 init (a gamma
    left out of the computation then changes the features). Built once per arguments: do not modify."""
    torch.manual_seed(seed)
    model = timm.create_model(TIMM_NAMES[registers], pretrained=False, num_classes=0, img_size=img_size)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("gamma"):
                param.copy_(torch.rand_like(param) * 0.5 + 0.1)
            if name == "reg_token":
                param.normal_(std=0.5)  # registers that matter (timm's init is ~1e-6)
    return model.eval()


def official_state(model: torch.nn.Module, registers: bool) -> dict[str, torch.Tensor]:
    """The official release layout (dinov2_vits14[_reg4]_pretrain.pth): a plain state dict, the CLS token
    with a position of its own in a 1 + 37 x 37 table, `register_tokens` with none, and a `mask_token`."""
    state = {("register_tokens" if k == "reg_token" else k): v.clone() for k, v in model.state_dict().items()}
    if registers:  # timm folds the CLS position into cls_token: unfold it as the release has it
        cls_pos = torch.randn(1, 1, WIDTH, generator=torch.Generator().manual_seed(5)) * 0.02
        state["pos_embed"] = torch.cat([cls_pos, state["pos_embed"]], dim=1)
        state["cls_token"] = state["cls_token"] - cls_pos
    state["mask_token"] = torch.zeros(1, WIDTH)
    return state


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> dict[bool, Path]:
    """registers -> the official-format file (518 px, 37 x 37 positions)."""
    root = tmp_path_factory.mktemp("dinov2")
    files = {}
    for registers in (True, False):
        state = official_state(dinov2_timm(registers), registers)
        assert state["pos_embed"].shape == (1, 1 + 37 * 37, WIDTH)
        files[registers] = root / f"dinov2_vits14{'_reg4' if registers else ''}_pretrain.pth"
        torch.save(state, files[registers])
    return files


def images(n: int = 4, size: int = 112) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def imagenet_normalized(x: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x.float() / 255 - mean) / std


@pytest.mark.parametrize("registers", [True, False], ids=["reg4", "plain"])
def test_official_file_gives_timms_features_at_112_px(released, registers, capsys):
    """The acceptance comparison: embed() of the file at 112 px = timm's DINOv2 at 112 px loaded through
    timm's own conversion (CLS position folded, 37 x 37 -> 8 x 8 resampled), ImageNet mean/std, CLS."""
    path = released[registers]
    encoder = hybridssl.load_encoder(path, image_size=112)
    line = capsys.readouterr().out
    model = "vit-small-ls-reg4" if registers else "vit-small-ls"
    assert f"(official DINOv2 format, {model}/14 at 518 px)" in line
    assert "mask token" in line and "37x37 -> 8x8" in line and "ImageNet's mean/std (DINOv2's)" in line
    assert "cls pooling" in line and "\n" not in line.strip()
    assert encoder.info.mean == IMAGENET_MEAN and encoder.pooling == "cls"
    ref = timm.create_model(TIMM_NAMES[registers], pretrained=False, num_classes=0, img_size=112)
    ref.load_state_dict(checkpoint_filter_fn(torch.load(path, weights_only=True), ref))
    x = images()
    ours = torch.as_tensor(np.asarray(encoder.embed(x)), dtype=torch.float32)
    with torch.no_grad():
        theirs = ref.eval()(imagenet_normalized(x))
    assert ours.shape == theirs.shape == (4, WIDTH)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5), (ours - theirs).abs().max()


@pytest.mark.parametrize(("registers", "suffix"), [(True, ".pth"), (False, ".safetensors")],
                         ids=["reg4-pth", "plain-safetensors"])
def test_timm_dinov2_state_dicts_import(registers, suffix, tmp_path):
    """timm's own layout (with registers: no CLS row, its position in cls_token) as a torch or safetensors
    state dict: timm's features, ImageNet's mean/std (DINOv2's, told by patch 14 with layer scale)."""
    model = dinov2_timm(registers, img_size=56, seed=1)
    path = tmp_path / f"dinov2{suffix}"
    torch.save(model.state_dict(), path) if suffix == ".pth" else save_file(model.state_dict(), str(path))
    trained = load_trained_encoder(path)
    cfg = trained.encoder.cfg
    assert (cfg.patch_size, cfg.image_size, cfg.reg_tokens, cfg.layer_scale) == (14, 56, 4 if registers else 0, True)
    assert trained.info.mean == IMAGENET_MEAN and trained.pooling == "cls"
    x = torch.randn(3, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(pool(trained.encoder(x), "cls"), model(x), atol=1e-5, rtol=1e-5)
        # the patch tokens (no registers among them) are timm's, so mean-patch pooling is timm's "avg" too
        tokens = model.forward_features(x)[:, model.num_prefix_tokens :]
        assert torch.allclose(trained.encoder(x)[:, 1:], tokens, atol=1e-5, rtol=1e-5)


def test_export_of_a_dinov2_started_encoder_reloads_in_timm(released, tmp_path):
    """Exported at 112 px, the file rebuilds in timm from its metadata with the features of our encoder,
    and comes back through load_encoder with them, its normalization and pooling."""
    out = tmp_path / "exported.safetensors"
    kwargs = export_encoder(released[True], out, image_size=112)
    assert (kwargs["reg_tokens"], kwargs["no_embed_class"], kwargs["init_values"]) == (4, True, 1e-5)
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    model = timm.create_model(meta["timm_model"], pretrained=False, **json.loads(meta["timm_kwargs"])).eval()
    model.load_state_dict(load_file(str(out)), strict=True)
    ours = load_trained_encoder(released[True], image_size=112)
    back = load_trained_encoder(out)
    assert back.info.mean == IMAGENET_MEAN and back.pooling == "cls" and back.encoder.cfg == ours.encoder.cfg
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = pool(ours.encoder(x), "cls")
        assert torch.allclose(model(x), expected, atol=1e-5, rtol=1e-5)
        assert torch.allclose(pool(back.encoder(x), "cls"), expected, atol=1e-5, rtol=1e-5)


def method_on(model: str, method: str = "mae") -> torch.nn.Module:
    cls = METHODS[method]
    encoder = ViT(vit_config(model, 112, 3, 14))
    return cls(cls.Config(), encoder, DataInfo("folder", 112, 3, IMAGENET_MEAN, IMAGENET_STD))


@pytest.mark.parametrize("method", ["mae", "mocov3"])
def test_methods_start_from_the_file_with_its_layer_scale_and_registers(released, method):
    """init_defaults picks the preset with the file's layer scale and registers, and init_from copies
    them (a masking method and a contrastive one with a momentum copy)."""
    path = released[True]
    given = {"method": method, "init_from": str(path), "dataset": "folder", "image_size": 112}
    layer = init_defaults(given)
    assert (layer["model"], layer["patch_size"]) == ("vit-small-ls-reg4", 14)
    target = method_on(layer["model"], method)
    loaded = init_from_checkpoint(target, path)
    file = torch.load(path, weights_only=True)
    encoder = target.encoder
    assert {"encoder.reg_token", "encoder.blocks.0.ls1.gamma", "encoder.blocks.11.ls2.gamma"} <= loaded
    assert torch.equal(encoder.reg_token, file["register_tokens"])
    assert torch.equal(encoder.blocks[3].ls2.gamma, file["blocks.3.ls2.gamma"])
    assert torch.equal(encoder.cls_token, file["cls_token"])
    assert torch.equal(encoder.pos_embed[:, :1], file["pos_embed"][:, :1])  # the CLS position, kept


def test_a_run_without_the_files_layer_scale_or_registers_is_one_line(released):
    """Given flags that contradict the file fail before data is read; an encoder built by hand, at load."""
    path = released[True]
    given = {"method": "mae", "init_from": str(path), "dataset": "folder", "image_size": 112}
    no_layer_scale = r"is a vit-small-ls-reg4 \(layer scale\), --model vit-small has no layer scale"
    with pytest.raises(ConfigError, match=no_layer_scale):
        init_defaults({**given, "model": "vit-small"})
    with pytest.raises(ConfigError, match=r"\(4 register tokens\), --model vit-small-ls has 0 register tokens"):
        init_defaults({**given, "model": "vit-small-ls"})
    with pytest.raises(CheckpointError, match="reg_tokens: .* has 4 register tokens, this run's encoder has 0"):
        init_from_checkpoint(method_on("vit-small-ls"), path)
    with pytest.raises(CheckpointError, match="layer scale: .* has layer scale, this run's encoder has none"):
        init_from_checkpoint(method_on("vit-small"), released[False])


def test_masking_keeps_registers_and_cls(released):
    """ids_keep selects patches only: CLS and the registers run in every pass, and the output is
    [CLS, kept patches] either way (what MAE's decoder and every `tokens[:, 1:]` reads)."""
    encoder = load_trained_encoder(released[True], image_size=112).encoder
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(4))
    keep = torch.stack([torch.randperm(64, generator=torch.Generator().manual_seed(i))[:16] for i in range(2)])
    with torch.no_grad():
        masked = encoder(x, keep)
        assert masked.shape == (2, 1 + 16, WIDTH) and encoder(x, keep, registers=True).shape == (2, 1 + 4 + 16, WIDTH)
        assert not torch.allclose(masked[:, 0], pool(encoder(x), "cls"), atol=1e-3)  # the CLS saw fewer patches


@pytest.mark.timeout(300)  # 3 s alone, 18-25 s on the shared 2-core machine under load
def test_mae_pretrains_from_the_official_file_through_the_cli(released, tmp_path, capsys):
    """`hybridssl pretrain --method mae --init-from <DINOv2 file>` at 112 px: one step, the checkpoint
    records the DINOv2 architecture and evaluates."""
    from hybridssl.data.synthetic import write_photo_folder

    photos = write_photo_folder(tmp_path / "photos", 16, num_classes=2, sizes=(120, 140))
    out = tmp_path / "run"
    assert main(["pretrain", "--method", "mae", "--init-from", str(released[True]), "--dataset", "folder",
                 "--data-dir", str(photos), "--image-size", "112", "--max-steps", "1", "--batch-size", "4",
                 "--accelerator", "cpu", "--no-progress-bar", "--output", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "official DINOv2 format, vit-small-ls-reg4/14 at 518 px" in printed and "37x37 -> 8x8" in printed
    ckpt = load_checkpoint(out / "checkpoints" / "last.ckpt")
    meta = ckpt["hybridssl"]
    assert meta["config"]["model"] == "vit-small-ls-reg4" and meta["config"]["patch_size"] == 14
    assert (meta["encoder"]["reg_tokens"], meta["encoder"]["init_values"]) == (4, 1e-5)
    assert tuple(meta["data_info"]["mean"]) == IMAGENET_MEAN
    assert ckpt["state_dict"]["method.encoder.reg_token"].shape == (1, 4, WIDTH)


def test_a_plain_vit_checkpoint_from_before_loads_unchanged(tiny_mae_run, tmp_path):
    """A checkpoint whose recorded encoder settings predate init_values / reg_tokens loads into the same
    plain ViT (no layer scale, no registers, same state-dict names) with the same features."""
    ckpt = torch.load(tiny_mae_run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    recorded = ckpt["hybridssl"]["encoder"]
    ckpt["hybridssl"]["encoder"] = {k: v for k, v in recorded.items() if k not in ("init_values", "reg_tokens")}
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    now, before = load_trained_encoder(tiny_mae_run / "checkpoints" / "last.ckpt"), load_trained_encoder(old)
    assert before.encoder.cfg == now.encoder.cfg and not before.encoder.cfg.layer_scale
    assert before.encoder.reg_token is None
    names = set(before.encoder.state_dict())
    assert names == {k.removeprefix("method.encoder.") for k in ckpt["state_dict"] if k.startswith("method.encoder.")}
    assert not any("gamma" in k or "reg_token" in k for k in names)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(before.encoder(x), now.encoder(x))


def test_what_the_vit_cannot_compute_is_one_line(tmp_path):
    """Registers with positions of their own (timm's default for reg_tokens) and DINOv2's ViT-g SwiGLU MLP."""
    torch.manual_seed(0)
    positioned = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=56,
                                   reg_tokens=2)  # timm's default no_embed_class=False: registers get positions
    path = tmp_path / "positioned.pth"
    torch.save(positioned.state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_trained_encoder(path)
    assert "positions for the CLS token, 2 register tokens and a 4x4 grid" in str(err.value)
    assert "\n" not in str(err.value)
    giant = official_state(dinov2_timm(False, img_size=56), registers=False)
    for key in [k for k in giant if ".mlp.fc" in k]:
        giant[key.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3")] = giant.pop(key)
    path = tmp_path / "dinov2_vitg14_pretrain.pth"
    torch.save(giant, path)
    with pytest.raises(CheckpointError) as err:
        init_defaults({"method": "mae", "init_from": str(path), "dataset": "folder"})
    assert "a SwiGLU MLP (DINOv2's ViT-g), which our ViT does not have" in str(err.value) and "\n" not in str(err.value)
