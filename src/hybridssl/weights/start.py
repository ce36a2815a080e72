"""What an `--init-from` file decides about a run, before anything is built from it.

- `init_defaults(given)`: what the file decides when the run does not say: the model preset (its
  width and depth, and layer scale and register tokens: DINOv2's ViT-S/B/L are the `vit-*-ls` and
  `vit-*-ls-reg4` presets, so the run's ViT, built from the preset, takes them), the
  patch size and, for folder datasets, the image size (the file's grid x patch size) and channels;
  `mae` also takes the file's decoder shape (below). A setting the run gives that a published file
  contradicts is a one-line error naming it, before any data is read.
- `start_info(info, run)`: a run started from a file normalizes its images with the mean/std the
  file's encoder was trained with (what ours recorded; a published file's own, else its architecture's
  default: weights/released.py).

MAE decoders: `mae` takes the file's decoder width and depth unless `method_args.decoder_*` is given
(init_from.py leaves a decoder of another shape out, with a note). The number of decoder heads is not
in the weights: width / 32 (MAE's decoders: 512 wide, 16 heads).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hybridssl.config import RunConfig
from hybridssl.data.sources import STATS, DataInfo
from hybridssl.errors import CheckpointError, ConfigError
from hybridssl.nn.vit import PRESETS
from hybridssl.weights.ours import check_hybridssl, checkpoint_data_info, encoder_config, is_hybridssl
from hybridssl.weights.reading import read_weights
from hybridssl.weights.released import Architecture, ForeignCheckpoint, Normalization, read_foreign

DECODER_FIELDS = ("decoder_dim", "decoder_depth", "decoder_heads")
DECODER_HEAD_DIM = 32  # MAE's decoders: 512 wide, 16 heads


@dataclass(frozen=True)
class StartFile:
    """What a file offers a run, before anything is built from it."""

    path: Path
    kind: str  # "hybridssl" or a published format (released.py)
    model: str
    patch_size: int
    image_size: int
    channels: int
    normalization: Normalization
    foreign: ForeignCheckpoint | None  # None for our checkpoints


def preset_key(preset: dict[str, Any]) -> tuple[int, int, bool, int]:
    """What of a preset the weights show: width, depth, layer scale, register tokens."""
    return preset["embed_dim"], preset["depth"], bool(preset.get("init_values")), preset.get("reg_tokens", 0)


def preset_name(arch: Architecture) -> str | None:
    """The preset with the file's width, depth, layer scale and register count (heads follow the
    preset: they are not in the weights)."""
    key = (arch.embed_dim, arch.depth, arch.layer_scale, arch.reg_tokens)
    found = [n for n, p in PRESETS.items() if preset_key(p) == key]
    return found[0] if found and math.isclose(arch.mlp_ratio, 4.0) else None


def extras(layer_scale: bool, reg_tokens: int) -> str:
    """` with layer scale and 4 register tokens`, or "" for a plain ViT."""
    parts = [*(["layer scale"] if layer_scale else []), *([f"{reg_tokens} register tokens"] if reg_tokens else [])]
    return f" with {' and '.join(parts)}" if parts else ""


def model_for(arch: Architecture, path: Path) -> str:
    """The preset a published ViT is, or a one-line error naming the field no preset has."""
    if not math.isclose(arch.mlp_ratio, 4.0):
        raise CheckpointError(f"mlp_ratio: {path}: its MLPs are {arch.mlp_ratio:g} x the width; ours are 4 x")
    name = preset_name(arch)
    if name is None:
        known = ", ".join(f"{n} {p['embed_dim']}/{p['depth']}" for n, p in PRESETS.items())
        raise CheckpointError(f"model: {path} holds a ViT of embed_dim {arch.embed_dim} and depth {arch.depth}"
                              f"{extras(arch.layer_scale, arch.reg_tokens)}, which no --model preset has ({known})")  # fmt: skip
    if arch.num_heads not in (None, PRESETS[name]["num_heads"]):
        raise CheckpointError(f"num_heads: {path} records {arch.num_heads} heads, the {name} preset has {PRESETS[name]['num_heads']}")
    return name


def read_start(path: str | Path) -> StartFile:
    """The file's architecture and normalization (tensors are mapped, not read, where torch can)."""
    path = Path(path)
    contents, metadata = read_weights(path)
    if is_hybridssl(contents):
        ckpt = check_hybridssl(contents, path)
        try:
            cfg, info = encoder_config(ckpt), checkpoint_data_info(ckpt)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path}: its encoder or data settings are invalid ({exc})") from None
        norm = Normalization(info.mean, info.std, "the mean/std recorded in the checkpoint")
        model = ckpt["hybridssl"]["config"].get("model")
        return StartFile(path, "hybridssl", model, cfg.patch_size, info.image_size, info.channels, norm, None)
    foreign = read_foreign(path, contents, metadata)
    arch = foreign.architecture
    model = model_for(arch, path)
    return StartFile(path, foreign.kind, model, arch.patch_size, arch.image_size, arch.in_chans, foreign.normalization, foreign)


def dataset_channels(given: dict[str, Any], folder: bool) -> tuple[int | None, str]:
    """The channels the run's images will have, if the run fixes them, and what fixes them."""
    if folder:
        return given.get("channels"), "--channels"
    dataset = given.get("dataset") or RunConfig.model_fields["dataset"].default
    return (len(STATS[dataset][0]), f"{dataset}'s images") if dataset in STATS else (None, "")


def preset_fields(name: str) -> dict[str, str]:
    """A preset's architecture as the weights show it, field by field, for the mismatch line."""
    width, depth, layer_scale, registers = preset_key(PRESETS[name])
    return {"embed_dim": f"embed_dim {width}", "depth": f"depth {depth}",
            "layer scale": "layer scale" if layer_scale else "no layer scale", "registers": f"{registers} register tokens"}  # fmt: skip


def check_given(start: StartFile, given: dict[str, Any], folder: bool) -> None:
    """One ConfigError line naming the first setting the run gives that the published file contradicts."""
    path, model = start.path, given.get("model")
    if model in PRESETS and model != start.model:
        ours, theirs = preset_fields(model), preset_fields(start.model)
        field = next((f for f in ours if ours[f] != theirs[f]), "embed_dim")
        raise ConfigError(f"model: {path} is a {start.model} ({theirs[field]}), --model {model} has {ours[field]}; "
                          "leave out --model to take the file's")  # fmt: skip
    patch = given.get("patch_size")
    if patch is not None and patch != start.patch_size:
        raise ConfigError(f"patch_size: {path} has {start.patch_size} px patches, the run asks for {patch}; "
                          "leave out --patch-size to take the file's")  # fmt: skip
    channels, source = dataset_channels(given, folder)
    if channels is not None and channels != start.channels:
        raise ConfigError(f"channels: {path} takes {start.channels}-channel images, {source} give {channels}")
    size = given.get("image_size")
    if folder and size is not None and size % start.patch_size:
        raise ConfigError(f"image_size: {size} px is not a whole number of {path}'s {start.patch_size} px patches")


def decoder_heads(width: int) -> int:
    """MAE's decoder head width (32), or the nearest count that divides `width`."""
    return next(h for h in range(max(1, width // DECODER_HEAD_DIM), 0, -1) if width % h == 0)


def decoder_defaults(foreign: ForeignCheckpoint, given: dict[str, Any]) -> dict[str, Any]:
    """`mae` takes the file's decoder shape unless the run sets any `method_args.decoder_*`."""
    shape = foreign.decoder_shape()
    args = given.get("method_args") or {}
    if given.get("method") != "mae" or shape is None or any(k in args for k in DECODER_FIELDS):
        return {}
    width, depth, ratio = shape
    if not math.isclose(ratio, 4.0) or depth == 0:
        return {}
    return {"method_args": {"decoder_dim": width, "decoder_depth": depth, "decoder_heads": decoder_heads(width)}}


def init_defaults(given: dict[str, Any]) -> dict[str, Any]:
    """The config layer an `--init-from` file contributes (config.resolve puts it under the file and
    flags the user gave): see the module docstring. Ours contradicting a given setting keep the errors
    `init_from_checkpoint` gives."""
    if not given.get("init_from"):
        return {}
    start = read_start(given["init_from"])
    folder = (given.get("dataset") or RunConfig.model_fields["dataset"].default) == "folder"
    layer: dict[str, Any] = {"model": start.model, "patch_size": start.patch_size}
    if folder:
        layer.update(image_size=start.image_size, channels=start.channels)
    if start.foreign is not None:
        check_given(start, given, folder)
        layer.update(decoder_defaults(start.foreign, given))
    return layer


def start_info(info: DataInfo, run_config: RunConfig) -> DataInfo:
    """The run's data info with the normalization of its `--init-from` file, when there is one (the
    encoder's features depend on it); a file with other channels is reported by init_from."""
    if not run_config.init_from:
        return info
    norm = read_start(run_config.init_from).normalization
    if len(norm.mean) != info.channels:
        return info
    return replace(info, mean=tuple(norm.mean), std=tuple(norm.std))


