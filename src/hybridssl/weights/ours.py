"""Our checkpoint format: atomic writes, checked loads, and the trained encoder or method inside one."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, NamedTuple

import torch

from hybridssl.data.sources import DataInfo
from hybridssl.errors import CheckpointError
from hybridssl.files import atomic_write, atomic_write_bytes
from hybridssl.nn.vit import Pooling, ViT, ViTConfig
from hybridssl.weights.reading import read_torch_file

ENCODER_PREFIX = "method.encoder."
ENCODER_EMA_PREFIX = "method.encoder_ema.module."  # the EMA of the encoder some methods keep (nn/encoder_ema.py)


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save through the one atomic writer (files.py): a kill leaves the old file or the new one."""
    atomic_write(path, lambda f: torch.save(obj, f))


def is_hybridssl(contents: Any) -> bool:
    """Whether a loaded file is one of our checkpoints (as opposed to another library's)."""
    return isinstance(contents, dict) and "hybridssl" in contents and "state_dict" in contents


def check_hybridssl(ckpt: Any, path: str | Path) -> dict[str, Any]:
    """`ckpt` itself once its metadata is complete; a one-line CheckpointError otherwise."""
    if not is_hybridssl(ckpt):
        raise CheckpointError(f"{path} is not a hybridssl checkpoint (no 'hybridssl' metadata)")
    meta = ckpt["hybridssl"]
    if not isinstance(meta, dict) or not {"config", "encoder", "data_info"} <= meta.keys():
        raise CheckpointError(f"{path} is not a hybridssl checkpoint (incomplete 'hybridssl' metadata)")
    return ckpt


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """One of our checkpoints, loaded with weights_only=True (`read_torch_file`) and its metadata checked."""
    return check_hybridssl(read_torch_file(path, map_location, mmap), path)


def trained_with(ckpt: dict[str, Any]) -> str:
    config = ckpt["hybridssl"]["config"]
    return f"method {config.get('method')} / model {config.get('model')}"


def run_label(run_config: Any) -> str:
    """`method M / model X` of a run config, as `trained_with` says it of a checkpoint."""
    return f"method {run_config.method} / model {run_config.model}"


def first_misfit(theirs: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> str | None:
    """`key: missing` or `key: (their shape), not (ours)` for the first entry of `own` that `theirs`
    lacks or shapes differently; None when all fit."""
    for key, value in own.items():
        found = theirs.get(key)
        if found is None or tuple(found.shape) != tuple(value.shape):
            return f"{key}: {'missing' if found is None else f'{tuple(found.shape)}, not {tuple(value.shape)}'}"
    return None


def check_fits(ckpt: dict[str, Any], own: dict[str, torch.Tensor], problem: str, prefix: str = "") -> None:
    """Raises one CheckpointError line, `problem` followed by the first entry that does not fit, when
    the checkpoint's entries named in `own` (keys without `prefix`) are missing or shaped differently."""
    theirs = {k.removeprefix(prefix): v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    misfit = first_misfit(theirs, own)
    if misfit:
        raise CheckpointError(f"{problem} ({misfit})")


def encoder_config(ckpt: dict[str, Any]) -> ViTConfig:
    return ViTConfig(**ckpt["hybridssl"]["encoder"])


def checkpoint_data_info(ckpt: dict[str, Any]) -> DataInfo:
    info = dict(ckpt["hybridssl"]["data_info"])
    return DataInfo(**{**info, "mean": tuple(info["mean"]), "std": tuple(info["std"])})


def encoder_state(ckpt: dict[str, Any], prefix: str = ENCODER_PREFIX) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}


def has_encoder_ema(ckpt: dict[str, Any]) -> bool:
    """Whether the checkpoint holds an EMA of its encoder (mim-refiner-tune; mae-ct-tune with encoder_ema)."""
    return any(k.startswith(ENCODER_EMA_PREFIX) for k in ckpt["state_dict"])


class TrainedEncoder(NamedTuple):
    encoder: ViT
    info: DataInfo
    config: dict[str, Any]  # the run config it was trained with
    pooling: Pooling  # the pooling its method is evaluated with


def checkpoint_pooling(ckpt: dict[str, Any]) -> Pooling:
    """The evaluation pooling recorded by the engine; checkpoints from before it was recorded: the
    method's default."""
    meta = ckpt["hybridssl"]
    if meta.get("pooling") in ("cls", "mean_patch"):
        return meta["pooling"]
    from hybridssl.methods import METHODS

    config = meta["config"]
    pooling = (config.get("method_args") or {}).get("pooling")
    return pooling if pooling in ("cls", "mean_patch") else getattr(METHODS.get(config.get("method")), "eval_pooling", "cls")


def encoder_of(ckpt: dict[str, Any], path: str | Path, ema: bool = False) -> TrainedEncoder:
    """The trained encoder of one of our checkpoints, already loaded (and checked) from `path`, with its data
    info, run config and evaluation pooling; with `ema`, the weights of the encoder's EMA instead (what
    MIM-Refiner and MAE-CT evaluate), or one CheckpointError line if the checkpoint kept none."""
    if ema and not has_encoder_ema(ckpt):
        raise CheckpointError(f"checkpoint {path} holds no EMA of its encoder ({trained_with(ckpt)}; mim-refiner-tune keeps one, "
                              "mae-ct-tune with method_args.encoder_ema=true); load it without ema")  # fmt: skip
    prefix = ENCODER_EMA_PREFIX if ema else ENCODER_PREFIX
    try:
        encoder = ViT(encoder_config(ckpt))
        info = checkpoint_data_info(ckpt)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: its encoder settings are invalid ({exc})") from None
    problem = f"checkpoint {path}: its weights do not fit its recorded encoder settings"
    check_fits(ckpt, encoder.state_dict(), problem, prefix)
    encoder.load_state_dict(encoder_state(ckpt, prefix))
    return TrainedEncoder(encoder.eval(), info, ckpt["hybridssl"]["config"], checkpoint_pooling(ckpt))


def release_checkpoint(checkpoint: str | Path, output: str | Path) -> None:
    """Writes the weights and settings of a checkpoint without its optimizer, loop and RNG state: what
    `--init-from`, `evaluate` and `load_method` read, at a third of the size (no resume from it)."""
    ckpt = load_checkpoint(checkpoint)
    meta = {k: v for k, v in ckpt["hybridssl"].items() if k != "rng"}
    buffer = io.BytesIO()
    torch.save({"state_dict": ckpt["state_dict"], "hybridssl": {**meta, "released_from": Path(checkpoint).name}}, buffer)
    atomic_write_bytes(output, buffer.getvalue())


def load_method(path: str | Path):
    """The whole trained method (encoder, decoders, heads) of a checkpoint, in eval mode."""
    from pydantic import ValidationError

    from hybridssl.config import RunConfig
    from hybridssl.errors import ConfigError
    from hybridssl.settings import format_validation_error
    from hybridssl.methods.base import build_method

    ckpt = load_checkpoint(path)
    try:  # the config names only registered methods, models and datasets, or fails here
        run_config = RunConfig.model_validate(ckpt["hybridssl"]["config"])
        method = build_method(run_config, checkpoint_data_info(ckpt))
    except ValidationError as exc:
        raise CheckpointError(f"checkpoint {path}: its config is invalid ({format_validation_error(exc)})") from None
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: its config is invalid ({exc})") from None
    problem = f"checkpoint {path}: its weights do not fit its recorded {trained_with(ckpt)}"
    check_fits(ckpt, method.state_dict(), problem, "method.")
    method.load_state_dict({k.removeprefix("method."): v for k, v in ckpt["state_dict"].items()})
    return method.eval()
