"""Published encoders (weights/released.py, start.py, loading.py, init_from.py): a timm ViT with random weights,
written in every format we read, gives our encoder the features timm's model gives; position tables are
resampled like timm resamples them; MAE decoders come along; what does not fit is one line naming it;
pickled objects are refused without being run. No network: every file is built here."""

from __future__ import annotations

import functools
import json
import pathlib
import pickle
import re
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import Block, checkpoint_filter_fn

from hybridssl.config import resolve
from hybridssl.data.sources import DataInfo
from hybridssl.weights.export import export_encoder
from hybridssl.weights.loading import load_trained_encoder as load_encoder
from hybridssl.weights.released import IMAGENET_MEAN, IMAGENET_STD, TIMM_VIT_MEAN, TIMM_VIT_STD
from hybridssl.weights.init_from import init_from_checkpoint
from hybridssl.weights.start import init_defaults
from hybridssl.weights.loading import load_trained_encoder
from hybridssl.errors import CheckpointError, ConfigError
from hybridssl.methods import METHODS
from hybridssl.nn.masking import random_mask
from hybridssl.nn.vit import ViT, vit_config

# timm names of the models the files are written from; `small` is vit-pico's shape on 32 px, patch 4
MODELS = {
    "base": ("vit_base_patch16_224", {}),
    "small": ("vit_base_patch16_224", {"img_size": 32, "patch_size": 4, "embed_dim": 128, "depth": 6, "num_heads": 4}),
}
FORMATS = ["official-mae", "timm-torch", "timm-safetensors", "hybridssl-safetensors", "mmpretrain"]


def timm_model(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """timm's model `name` with random weights drawn from `seed` (without kwargs: built once per seed)."""
    return build_timm(name, seed, **kwargs) if kwargs else cached_model(name, seed)


def build_timm(name: str, seed: int, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    arch, defaults = MODELS[name]
    return timm.create_model(arch, pretrained=False, **{**defaults, **kwargs}).eval()


@functools.lru_cache(maxsize=4)
def cached_model(name: str, seed: int) -> torch.nn.Module:
    return build_timm(name, seed)


def mae_decoder(encoder_width: int, patch: int, grid: int, width: int = 64, depth: int = 2) -> dict[str, torch.Tensor]:
    """MAE's decoder in models_mae.py's names (blocks are timm Blocks), random weights."""
    torch.manual_seed(1)
    state = {"mask_token": torch.randn(1, 1, width) * 0.02, "decoder_pos_embed": torch.randn(1, 1 + grid * grid, width),
             "decoder_embed.weight": torch.randn(width, encoder_width) * 0.02, "decoder_embed.bias": torch.randn(width) * 0.02,
             "decoder_norm.weight": 1 + torch.randn(width) * 0.1, "decoder_norm.bias": torch.randn(width) * 0.1,
             "decoder_pred.weight": torch.randn(patch * patch * 3, width) * 0.02, "decoder_pred.bias": torch.zeros(patch * patch * 3)}  # fmt: skip
    for i in range(depth):
        block = Block(width, width // 32, mlp_ratio=4, qkv_bias=True)
        state.update({f"decoder_blocks.{i}.{k}": v for k, v in block.state_dict().items()})
    return state


MMPRETRAIN_BLOCK = [("norm1.", "ln1."), ("norm2.", "ln2."), ("mlp.fc1.", "ffn.layers.0.0."), ("mlp.fc2.", "ffn.layers.1.")]


def mmpretrain_name(key: str) -> str:
    """timm name -> mmpretrain's (mmpretrain/models/backbones/vision_transformer.py, necks/mae_neck.py)."""
    if key.startswith("head."):
        return f"head.layers.{key}"
    if key.startswith(("mask_token", "decoder_")):
        key = key.replace("decoder_norm.", "ln1.")
        for old, new in MMPRETRAIN_BLOCK:
            key = key.replace(old, new)
        return f"neck.{key}"
    key = key.replace("patch_embed.proj.", "patch_embed.projection.")
    key = re.sub(r"^blocks\.", "layers.", key)
    key = re.sub(r"^norm\.", "ln1.", key)
    for old, new in MMPRETRAIN_BLOCK:
        key = key.replace(old, new)
    return f"backbone.{key}"


def write(fmt: str, model: torch.nn.Module, path: Path, extra: dict[str, torch.Tensor] | None = None) -> Path:
    """The model's weights (plus `extra`, e.g. an MAE decoder) as a file of format `fmt`."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    encoder = {k: v for k, v in state.items() if not k.startswith("head")}
    if fmt == "official-mae":  # torch.save({"model": ...}) of models_mae.py: no classifier head
        torch.save({"model": {**encoder, **(extra or {})}}, path)
    elif fmt == "timm-torch":
        torch.save({**state, **(extra or {})}, path)
    elif fmt == "timm-safetensors":
        save_file({**state, **(extra or {})}, str(path), metadata={"format": "pt"})
    elif fmt == "hybridssl-safetensors":  # what `hybridssl export` writes
        cfg = model.patch_embed.proj.weight.shape
        kwargs = {"img_size": model.patch_embed.img_size[0], "patch_size": cfg[-1], "in_chans": cfg[1], "embed_dim": cfg[0]}
        pretrained = {"mean": [0.3, 0.4, 0.5], "std": [0.2, 0.25, 0.3], "input_size": [3, kwargs["img_size"], kwargs["img_size"]]}
        metadata = {"timm_kwargs": json.dumps(kwargs), "pretrained_cfg": json.dumps(pretrained), "hybridssl_method": "mae"}
        save_file(encoder, str(path), metadata=metadata)
    elif fmt == "mmpretrain":
        meta = {"mmpretrain_version": "1.2.0", "dataset_meta": {"classes": ("a", "b")}}
        torch.save({"meta": meta, "state_dict": {mmpretrain_name(k): v for k, v in {**state, **(extra or {})}.items()}}, path)
    else:
        raise AssertionError(fmt)
    return path


def images(size: int, n: int = 2, seed: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_gives_timms_features(fmt, name, tmp_path, capsys):
    model = timm_model(name)
    path = write(fmt, model, tmp_path / ("w.safetensors" if "safetensors" in fmt else "w.pth"))
    trained = load_trained_encoder(path)
    line = capsys.readouterr().out.strip()
    x = images(model.patch_embed.img_size[0])
    with torch.no_grad():
        diff = (trained.encoder(x) - model.forward_features(x)).abs().max().item()
    print(f"{fmt} {name}: max abs diff {diff:.3g}")
    assert diff < 1e-5, diff
    assert f"checkpoint {path}" in line and "loaded the encoder" in line and "\n" not in line
    if fmt == "hybridssl-safetensors":  # the normalization the file records, not ImageNet's
        assert trained.info.mean == (0.3, 0.4, 0.5) and "the file's mean/std" in line
    elif fmt.startswith("timm"):  # timm's ViT default, not ImageNet's
        assert (trained.info.mean, trained.info.std) == (TIMM_VIT_MEAN, TIMM_VIT_STD) and "timm's ViT default mean/std 0.5/0.5" in line
    else:  # the official MAE's and mmpretrain's own statistics
        assert (trained.info.mean, trained.info.std) == (IMAGENET_MEAN, IMAGENET_STD) and "ImageNet's mean/std" in line
    if fmt in ("timm-torch", "timm-safetensors", "mmpretrain"):
        assert "left out: classifier head (head.*)" in line
    path.unlink()


@pytest.mark.parametrize("fmt", FORMATS)
def test_init_from_each_format_loads_the_encoder_of_any_method(fmt, tmp_path, capsys):
    model = timm_model("small", seed=4)
    path = write(fmt, model, tmp_path / ("w.safetensors" if "safetensors" in fmt else "w.pth"))
    torch.manual_seed(0)
    info = DataInfo("folder", 32, 3, IMAGENET_MEAN, IMAGENET_STD)
    cls = METHODS["mocov3"]
    method = cls(cls.Config(), ViT(vit_config("vit-pico", 32, 3, 4)), info)
    loaded = init_from_checkpoint(method, path)
    assert {k for k in loaded if not k.startswith("encoder.")} == set()
    x = images(32)
    with torch.no_grad():
        assert (method.encoder.eval()(x) - model.forward_features(x)).abs().max() < 1e-5
        momentum = method.momentum_encoder.module  # restarted as a copy of the loaded encoder
        assert torch.equal(momentum.blocks[0].attn.qkv.weight, method.encoder.blocks[0].attn.qkv.weight)
    assert "init_from:" in capsys.readouterr().out


def test_a_224_checkpoint_at_112_px_matches_timms_resampled_model(tmp_path, capsys):
    model = timm_model("base")
    path = write("official-mae", model, tmp_path / "mae.pth")
    trained = load_trained_encoder(path, image_size=112)
    assert trained.encoder.cfg.grid_size == 7 and trained.info.image_size == 112
    resized = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=112).eval()
    resized.load_state_dict(checkpoint_filter_fn(model.state_dict(), resized))  # timm's own resampling
    x = images(112)
    with torch.no_grad():
        assert (trained.encoder(x) - resized.forward_features(x)).abs().max() < 1e-5
    assert "position embeddings resampled (14x14 -> 7x7 grid" in capsys.readouterr().out
    path.unlink()


def test_mae_continues_from_the_official_decoder(tmp_path, capsys):
    """The file's decoder shape is taken, every decoder entry lands, and the reconstruction is what
    models_mae.py's forward_decoder computes with the file's tensors (timm Blocks)."""
    model = timm_model("small", seed=2)
    decoder = mae_decoder(128, 4, 8)
    path = write("official-mae", model, tmp_path / "mae.pth", decoder)
    run = resolve({"method": "mae", "init_from": str(path), "dataset": "folder", "data_dir": str(tmp_path)}, None, init_defaults)
    assert (run.model, run.patch_size, run.image_size, run.channels) == ("vit-pico", 4, 32, 3)
    assert {k: run.method_args[k] for k in ("decoder_dim", "decoder_depth", "decoder_heads")} == {
        "decoder_dim": 64, "decoder_depth": 2, "decoder_heads": 2}  # fmt: skip
    cls = METHODS["mae"]
    method = cls(cls.Config(**run.method_args), ViT(vit_config("vit-pico", 32, 3, 4)), DataInfo("folder", 32, 3, IMAGENET_MEAN, IMAGENET_STD))
    loaded = init_from_checkpoint(method, path, run)
    assert {k for k in loaded if k.startswith("decoder.")} == {f"decoder.{k}" for k in method.decoder.state_dict()}
    assert "and the MAE decoder" in capsys.readouterr().out
    x = images(32, n=3)
    torch.manual_seed(5)
    mask = random_mask(3, 64, 0.75, x.device)
    with torch.no_grad():
        method.eval()
        ours = method.decoder(method.encoder(x, mask.ids_keep), mask.ids_restore)
        tokens = method.encoder(x, mask.ids_keep)  # the encoder's import is checked above
        h = tokens @ decoder["decoder_embed.weight"].T + decoder["decoder_embed.bias"]
        fill = decoder["mask_token"].expand(3, 64 - h.shape[1] + 1, -1)
        patches = torch.gather(torch.cat([h[:, 1:], fill], 1), 1, mask.ids_restore[..., None].expand(-1, -1, h.shape[-1]))
        h = torch.cat([h[:, :1], patches], 1) + decoder["decoder_pos_embed"]
        for i in range(2):
            block = Block(64, 2, mlp_ratio=4, qkv_bias=True).eval()
            block.load_state_dict({k.split(".", 2)[2]: v for k, v in decoder.items() if k.startswith(f"decoder_blocks.{i}.")})
            h = block(h)
        h = torch.nn.functional.layer_norm(h, (64,), decoder["decoder_norm.weight"], decoder["decoder_norm.bias"], eps=1e-6)
        reference = (h @ decoder["decoder_pred.weight"].T + decoder["decoder_pred.bias"])[:, 1:]
    assert (ours - reference).abs().max() < 1e-5


def test_a_decoder_of_another_shape_is_left_out_with_a_note(tmp_path, capsys):
    path = write("mmpretrain", timm_model("small"), tmp_path / "mmpretrain_mae.pth", mae_decoder(128, 4, 8))
    cls = METHODS["mae"]
    method = cls(cls.Config(decoder_dim=32, decoder_depth=1, decoder_heads=1), ViT(vit_config("vit-pico", 16, 3, 4)),
                 DataInfo("folder", 16, 3, IMAGENET_MEAN, IMAGENET_STD))  # fmt: skip
    before = {k: v.clone() for k, v in method.decoder.state_dict().items()}
    loaded = init_from_checkpoint(method, path)
    assert not any(k.startswith("decoder.") for k in loaded)
    assert all(torch.equal(v, method.decoder.state_dict()[k]) for k, v in before.items())
    line = capsys.readouterr().out.strip()
    assert "left out: classifier head (head.*), MAE decoder (the file's is 64 wide x 2 blocks, this run's 32 x 1" in line
    assert "position embeddings resampled (8x8 -> 4x4 grid" in line


def test_the_model_and_sizes_come_from_the_file_and_given_ones_must_agree(tmp_path):
    path = write("timm-torch", timm_model("base"), tmp_path / "vit_b.pth")
    base = {"method": "mae-ct", "init_from": str(path), "dataset": "folder", "data_dir": str(tmp_path)}
    run = resolve(base, None, init_defaults)
    assert (run.model, run.patch_size, run.image_size, run.channels) == ("vit-base", 16, 224, 3)
    assert resolve({**base, "model": "vit-base", "image_size": 160}, None, init_defaults).image_size == 160
    cases = {
        "model": ({"model": "vit-small"}, "model: " + str(path) + " is a vit-base (embed_dim 768), --model vit-small has embed_dim 384"),
        "patch_size": ({"patch_size": 8}, "patch_size: " + str(path) + " has 16 px patches, the run asks for 8"),
        "channels": ({"channels": 1}, "channels: " + str(path) + " takes 3-channel images, --channels give 1"),
        "dataset channels": ({"dataset": "fashion-mnist"}, "channels: " + str(path) + " takes 3-channel images, fashion-mnist's images give 1"),
        "image_size": ({"image_size": 100}, "image_size: 100 px is not a whole number of " + str(path) + "'s 16 px patches"),
    }  # fmt: skip
    for name, (flags, message) in cases.items():
        with pytest.raises(ConfigError) as err:
            resolve({**base, **flags}, None, init_defaults)
        assert message in str(err.value) and "\n" not in str(err.value), name
    path.unlink()


def test_architecture_mismatches_at_load_time_name_the_field(tmp_path):
    """Past the config layer (a run config built by hand), loading says which field differs."""
    path = write("official-mae", timm_model("small"), tmp_path / "mae.pth")
    info = DataInfo("folder", 32, 3, IMAGENET_MEAN, IMAGENET_STD)
    cls = METHODS["mae"]
    cases = {
        "embed_dim 128, this run's encoder has 192": vit_config("vit-tiny", 32, 3, 4),
        "depth 6, this run's encoder has 12": vit_config("vit-pico", 32, 3, 4, depth=12),
        "patch_size: " + str(path) + " has 4 px patches, this run has 8": vit_config("vit-pico", 32, 3, 8),
        "channels: " + str(path) + " takes 3-channel images, this run's have 1": vit_config("vit-pico", 32, 1, 4),
    }
    for message, cfg in cases.items():
        with pytest.raises(CheckpointError) as err:
            init_from_checkpoint(cls(cls.Config(), ViT(cfg), info), path)
        assert message in str(err.value) and "\n" not in str(err.value), message


def test_vits_we_cannot_represent_are_one_line_errors(tmp_path):
    cases = {
        "layer scale": timm_model("small", init_values=1e-5),
        "register tokens": timm_model("small", reg_tokens=2),
        "no final norm but an fc_norm": timm_model("small", global_pool="avg", fc_norm=True),
        "no 'blocks.0.attn.qkv.bias' entry (our ViT's blocks have qkv biases)": timm_model("small", qkv_bias=False),
        "mlp_ratio: ": timm_model("small", mlp_ratio=2.0),
        "which no --model preset has": timm_model("small", depth=4),
    }
    for message, model in cases.items():
        path = write("timm-torch", model, tmp_path / "w.pth")
        with pytest.raises((CheckpointError, ConfigError)) as err:
            init_defaults({"method": "mae", "init_from": str(path), "dataset": "folder"})
        assert message in str(err.value) and "\n" not in str(err.value), (message, str(err.value))


class Payload:
    """Unpickling this would touch a file: the proof that a load executed code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the plain pickle, before it refuses it
def test_pickles_that_are_not_state_dicts_are_refused_without_running(tmp_path):
    marker = tmp_path / "code-ran"
    torch_file, plain_pickle, a_list = tmp_path / "obj.pth", tmp_path / "obj.pkl", tmp_path / "list.pth"
    torch.save({"model": Payload(marker)}, torch_file)
    plain_pickle.write_bytes(pickle.dumps(Payload(marker)))
    torch.save([torch.zeros(2)], a_list)
    for path in (torch_file, plain_pickle):
        for load in (load_trained_encoder, lambda p: init_defaults({"method": "mae", "init_from": str(p)})):
            with pytest.raises(CheckpointError) as err:
                load(path)
            assert f"{path} is not a readable checkpoint" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        load_trained_encoder(a_list)
    with pytest.raises(CheckpointError, match="nor an official MAE, timm or mmpretrain ViT"):
        torch.save({"state_dict": {"w": torch.zeros(1)}}, tmp_path / "other.pth")
        load_trained_encoder(tmp_path / "other.pth")


def test_an_official_mae_training_checkpoint_with_its_args_loads(tmp_path):
    """MAE's own training checkpoints keep `args` (an argparse.Namespace) beside the weights."""
    import argparse

    model = timm_model("small")
    path = tmp_path / "checkpoint-799.pth"
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head")}
    torch.save({"model": state, "epoch": 799, "args": argparse.Namespace(model="mae_vit_base_patch16", norm_pix_loss=True)}, path)
    assert load_trained_encoder(path).encoder.cfg.embed_dim == 128


def test_our_export_comes_back_with_its_normalization_and_pooling(tiny_mae_run, tmp_path, capsys):
    ckpt = tiny_mae_run / "checkpoints" / "last.ckpt"
    path = tmp_path / "encoder.safetensors"
    export_encoder(ckpt, path)
    ours, imported = load_encoder(ckpt), load_trained_encoder(path)
    assert (imported.info.mean, imported.info.std, imported.pooling) == (ours.info.mean, ours.info.std, ours.pooling)
    assert "hybridssl export format, vit-pico/4 at 28 px" in capsys.readouterr().out
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert (imported.encoder(x) - ours.encoder(x)).abs().max() < 1e-6


def test_ours_at_another_image_size_is_resampled(tiny_mae_run, capsys):
    ckpt = tiny_mae_run / "checkpoints" / "last.ckpt"
    trained = load_trained_encoder(ckpt, image_size=56)
    assert trained.encoder.cfg.grid_size == 14 and trained.info.image_size == 56
    assert "position embeddings resampled (7x7 -> 14x14 grid" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="image_size: 30 px is not a whole number"):
        load_trained_encoder(ckpt, image_size=30)
