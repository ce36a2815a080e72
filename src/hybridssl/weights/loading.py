"""The encoder of any file hybridssl reads (ours at any stage, our exports, official MAE and DINOv2,
timm, mmpretrain), at any image size, with the normalization and pooling it is to be used with.

Published files are reported in one line: what was loaded and left out, any resampling, the
normalization and the pooling. Nothing here imports the engine or Lightning.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from hybridssl.data.sources import DataInfo
from hybridssl.errors import CheckpointError, ConfigError
from hybridssl.nn.distributed import launched_rank
from hybridssl.nn.vit import Pooling, ViT, vit_config
from hybridssl.weights.ours import TrainedEncoder, check_hybridssl, encoder_of, is_hybridssl
from hybridssl.weights.reading import read_weights, require_finite
from hybridssl.weights.released import ForeignCheckpoint, read_foreign
from hybridssl.weights.resample import resample_tables, resampling_note
from hybridssl.weights.start import model_for, preset_name


def announce(line: str) -> None:
    """One line on stdout (the first process only): what was imported and how."""
    if launched_rank() == 0:
        print(f"hybridssl: {line}", flush=True)


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


def load_trained_encoder(path: str | Path, image_size: int | None = None, mean: tuple[float, ...] | None = None,
                         std: tuple[float, ...] | None = None, pooling: Pooling | None = None,
                         ema: bool = False) -> TrainedEncoder:
    """The encoder of one of our checkpoints or of a published file, at `image_size` (default: the
    size it was trained at; a published file: its grid x patch size), with its data info, config and
    evaluation pooling (published: mean-patch for an MAE, CLS otherwise); `mean`/`std`/`pooling`
    replace what the file says. `ema`: the weights of the EMA of the encoder our checkpoint kept
    (mim-refiner-tune; mae-ct-tune with encoder_ema) instead of the encoder's. Published files and any
    resampling are reported in one line."""
    path = Path(path)
    contents, metadata = read_weights(path)
    foreign = None if is_hybridssl(contents) else read_foreign(path, contents, metadata)
    if ema and foreign is not None:
        raise CheckpointError(f"ema: {path} is a published file ({describe(foreign)}) with one encoder and no EMA of it")
    trained = encoder_of(check_hybridssl(contents, path), path, ema) if foreign is None else foreign_encoder(foreign)
    require_finite(trained.encoder.state_dict(), path)
    trained = overridden(trained, mean, std, pooling, path)
    trained, resampled = at_image_size(trained, image_size, path)
    if foreign is not None:
        clauses = [f"loaded the encoder ({len(foreign.encoder)} tensors)",
                   f"left out: {', '.join([*foreign.left_out, *(['MAE decoder'] if foreign.decoder else [])]) or 'nothing'}",
                   *([resampled] if resampled else []),
                   f"images normalized with {'the mean/std given' if mean else foreign.normalization.source}",
                   f"{trained.pooling} pooling"]  # fmt: skip
        announce(f"checkpoint {path} ({describe(foreign)}): {'; '.join(clauses)}")
    elif resampled:
        announce(f"checkpoint {path}: {resampled}")
    return trained


def overridden(trained: TrainedEncoder, mean: tuple[float, ...] | None, std: tuple[float, ...] | None,
               pooling: Pooling | None, path: Path) -> TrainedEncoder:  # fmt: skip
    """`trained` with the normalization and pooling a user gives instead of the file's."""
    if (mean is None) != (std is None):
        raise ConfigError("mean/std: give both or neither")
    if mean is not None and std is not None:
        channels = trained.info.channels
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise ConfigError(f"mean/std: {path} takes {channels}-channel images: {channels} values each, std > 0")
        trained = trained._replace(info=replace(trained.info, mean=tuple(map(float, mean)), std=tuple(map(float, std))))
    if pooling is not None:
        if pooling not in ("cls", "mean_patch"):
            raise ConfigError(f"pooling: {pooling!r}; choose cls or mean_patch")
        trained = trained._replace(pooling=pooling)
    return trained
