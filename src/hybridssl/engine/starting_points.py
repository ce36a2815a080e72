"""What a run or an evaluation starts from: one of our checkpoints, or an encoder published by another
library (engine/foreign.py: the official MAE release, timm, safetensors, mmpretrain); engine/init_from.py
copies its weights into a method.

- `init_defaults(given)`: what an `--init-from` file decides when the run does not say: the model
  preset, the patch size and, for folder datasets, the image size (the file's grid x patch size) and
  channels; `mae` also takes the file's decoder shape (below). A setting the run gives that a
  published file contradicts is a one-line error naming it, before any data is read.
- `start_info(info, run)`: a run started from a file normalizes its images with the mean/std the
  file's encoder was trained with (what ours recorded; a published file's own, else ImageNet's).
- `load_start_encoder(path, image_size)`: `evaluate`'s encoder from either kind of file.

Whenever a file's grid differs from the run's (another image size), position tables are resampled
with timm's resampling (nn/pos_embed.resample_grid): a 224 px ViT/16 runs at 160 or 112 px. Reading a
published file is reported in one line: what was loaded and left out, the resampling, the normalization.

MAE decoders: `mae` takes the file's decoder width and depth unless `method_args.decoder_*` is given
(init_from.py leaves a decoder of another shape out, with a note). The number of decoder heads is not
in the weights: width / 32 (MAE's decoders: 512 wide, 16 heads).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.rank_zero import rank_zero_only
from torch import Tensor

from hybridssl.config import RunConfig
from hybridssl.data.sources import STATS, DataInfo
from hybridssl.engine.checkpoints import (
    TrainedEncoder,
    check_hybridssl,
    checkpoint_data_info,
    encoder_config,
    encoder_of,
    is_hybridssl,
)
from hybridssl.engine.foreign import (
    Architecture,
    ForeignCheckpoint,
    Normalization,
    read_foreign,
    read_weights,
)
from hybridssl.errors import CheckpointError, ConfigError
from hybridssl.nn.pos_embed import resample_grid
from hybridssl.nn.vit import PRESETS, ViT, vit_config

DECODER_FIELDS = ("decoder_dim", "decoder_depth", "decoder_heads")
DECODER_HEAD_DIM = 32  # MAE's decoders: 512 wide, 16 heads


@dataclass(frozen=True)
class StartFile:
    """What a file offers a run, before anything is built from it."""

    path: Path
    kind: str  # "hybridssl" or a published format (foreign.py)
    model: str
    patch_size: int
    image_size: int
    channels: int
    normalization: Normalization
    foreign: ForeignCheckpoint | None  # None for our checkpoints


def announce(line: str) -> None:
    """One line on stdout (rank zero only): what was imported and how."""
    if rank_zero_only.rank == 0:
        print(f"hybridssl: {line}", flush=True)


def preset_name(arch: Architecture) -> str | None:
    """The preset with the file's width and depth (heads follow the preset: they are not in the weights)."""
    found = [n for n, p in PRESETS.items() if (p["embed_dim"], p["depth"]) == (arch.embed_dim, arch.depth)]
    return found[0] if found and math.isclose(arch.mlp_ratio, 4.0) else None


def model_for(arch: Architecture, path: Path) -> str:
    """The preset a published ViT is, or a one-line error naming the field no preset has."""
    if not math.isclose(arch.mlp_ratio, 4.0):
        raise CheckpointError(f"mlp_ratio: {path}: its MLPs are {arch.mlp_ratio:g} x the width; ours are 4 x")
    name = preset_name(arch)
    if name is None:
        known = ", ".join(f"{n} {p['embed_dim']}/{p['depth']}" for n, p in PRESETS.items())
        raise CheckpointError(f"model: {path} holds a ViT of embed_dim {arch.embed_dim} and depth {arch.depth}, "
                              f"which no --model preset has ({known})")  # fmt: skip
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


def check_given(start: StartFile, given: dict[str, Any], folder: bool) -> None:
    """One ConfigError line naming the first setting the run gives that the published file contradicts."""
    path, model = start.path, given.get("model")
    if model in PRESETS and model != start.model:
        ours, theirs = PRESETS[model], PRESETS[start.model]
        field = "embed_dim" if ours["embed_dim"] != theirs["embed_dim"] else "depth"
        raise ConfigError(f"model: {path} is a {start.model} ({field} {theirs[field]}), --model {model} has {field} "
                          f"{ours[field]}; leave out --model to take the file's")  # fmt: skip
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


def resample_tables(state: dict[str, Tensor], own: dict[str, Tensor]) -> list[tuple[int, int]]:
    """Resamples, in place, every `*pos_embed` table of `state` whose grid differs from the one of the
    same name in `own` (same width); returns the (old, new) grid sides."""
    changes = []
    for key, table in list(state.items()):
        target = own.get(key)
        if not key.endswith("pos_embed") or target is None or table.shape == target.shape:
            continue
        old, new = math.isqrt(table.shape[-2] - 1), math.isqrt(target.shape[-2] - 1)
        if table.dim() == target.dim() and table.shape[-1] == target.shape[-1] and old * old == table.shape[-2] - 1:
            state[key] = resample_grid(table, new)
            changes.append((old, new))
    return changes


def resampling_note(changes: list[tuple[int, int]]) -> str:
    grids = ", ".join(dict.fromkeys(f"{a}x{a} -> {b}x{b}" for a, b in changes))
    return f"position embeddings resampled ({grids} grid, timm's bicubic resampling)"


def describe(foreign: ForeignCheckpoint) -> str:
    """e.g. `official MAE format, vit-base/16 at 224 px`."""
    arch = foreign.architecture
    return f"{foreign.kind} format, {preset_name(arch) or 'ViT'}/{arch.patch_size} at {arch.image_size} px"


def foreign_encoder(foreign: ForeignCheckpoint) -> TrainedEncoder:
    """A published encoder at its own image size, with the data info and pooling evaluate uses."""
    arch, path = foreign.architecture, foreign.path
    model = model_for(arch, path)
    encoder = ViT(vit_config(model, arch.image_size, arch.in_chans, arch.patch_size))
    encoder.load_state_dict(foreign.encoder)
    norm = foreign.normalization
    info = DataInfo("imported", arch.image_size, arch.in_chans, norm.mean, norm.std)
    config = {"method": foreign.kind.replace(" ", "-").lower(), "model": model, "dataset": None, "data_dir": None}
    recorded = foreign.metadata.get("hybridssl_pooling")  # our exports say how their method is evaluated
    pooling = recorded if recorded in ("cls", "mean_patch") else "mean_patch" if foreign.masked_pretraining else "cls"
    return TrainedEncoder(encoder.eval(), info, config, pooling)


def at_image_size(trained: TrainedEncoder, image_size: int | None, path: Path) -> tuple[TrainedEncoder, str]:
    """The encoder at `image_size` (position table resampled) and the clause saying so ("" if unchanged)."""
    cfg = trained.encoder.cfg
    if image_size is None or image_size == cfg.image_size:
        return trained, ""
    if image_size % cfg.patch_size:
        raise ConfigError(f"image_size: {image_size} px is not a whole number of {path}'s {cfg.patch_size} px patches")
    encoder = ViT(replace(cfg, image_size=image_size))
    state = trained.encoder.state_dict()
    changes = resample_tables(state, encoder.state_dict())
    encoder.load_state_dict(state)
    info = replace(trained.info, image_size=image_size)
    return trained._replace(encoder=encoder.eval(), info=info), resampling_note(changes)


def load_start_encoder(path: str | Path, image_size: int | None = None) -> TrainedEncoder:
    """The encoder of one of our checkpoints or of a published file, at `image_size` (default: the
    size it was trained at; a published file: its grid x patch size), with its data info, config and
    evaluation pooling (published: mean-patch for an MAE, CLS otherwise). Published files and any
    resampling are reported in one line."""
    path = Path(path)
    contents, metadata = read_weights(path)
    foreign = None if is_hybridssl(contents) else read_foreign(path, contents, metadata)
    trained = encoder_of(check_hybridssl(contents, path), path) if foreign is None else foreign_encoder(foreign)
    trained, resampled = at_image_size(trained, image_size, path)
    if foreign is not None:
        clauses = [f"loaded the encoder ({len(foreign.encoder)} tensors)",
                   f"left out: {', '.join([*foreign.left_out, *(['MAE decoder'] if foreign.decoder else [])]) or 'nothing'}",
                   *([resampled] if resampled else []), f"images normalized with {foreign.normalization.source}",
                   f"{trained.pooling} pooling"]  # fmt: skip
        announce(f"checkpoint {path} ({describe(foreign)}): {'; '.join(clauses)}")
    elif resampled:
        announce(f"checkpoint {path}: {resampled}")
    return trained
