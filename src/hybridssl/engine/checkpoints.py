"""Atomic checkpoint writes, safe loads, and encoder export with timm key names."""

from __future__ import annotations

import argparse
import io
import json
import re
from pathlib import Path
from typing import Any, NamedTuple

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from hybridssl.data.sources import DataInfo
from hybridssl.errors import CheckpointError
from hybridssl.files import atomic_write, atomic_write_bytes
from hybridssl.nn.vit import Pooling, ViT, ViTConfig

ENCODER_PREFIX = "method.encoder."


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save through the one atomic writer (files.py): a kill leaves the old file or the new one."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load_failure(exc: Exception) -> str:
    """torch's reasons in one short line; a refused Python object is named, never constructed."""
    text = str(exc)
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return f"it holds a Python object ({refused.group(1)}), which a weights-only load refuses"
    first = re.sub(r"\x1b\[[0-9;]*m", "", text).strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first[:200]}"


def read_torch_file(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> Any:
    """torch.load with weights_only=True: tensors and plain containers only, never arbitrary objects
    (argparse.Namespace is allowed too: the official MAE training checkpoints store their `args` in
    one, and rebuilding it only sets attributes). `mmap` reads tensors lazily; files in torch's legacy
    (pre-zip) format cannot be mapped and are read whole."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except RuntimeError as exc:
        if mmap and "mmap can only be used" in str(exc):
            return read_torch_file(path, map_location, mmap=False)
        raise CheckpointError(f"{path} is not a readable checkpoint ({load_failure(exc)})") from None
    except Exception as exc:  # torch raises many types for foreign or torn files
        raise CheckpointError(f"{path} is not a readable checkpoint ({load_failure(exc)})") from None


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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O that writes atomically and loads with weights_only=True."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any = None) -> None:
        atomic_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path, map_location or "cpu")


def encoder_config(ckpt: dict[str, Any]) -> ViTConfig:
    return ViTConfig(**ckpt["hybridssl"]["encoder"])


def checkpoint_data_info(ckpt: dict[str, Any]) -> DataInfo:
    info = dict(ckpt["hybridssl"]["data_info"])
    return DataInfo(**{**info, "mean": tuple(info["mean"]), "std": tuple(info["std"])})


def encoder_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k[len(ENCODER_PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(ENCODER_PREFIX)}


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


def load_encoder(path: str | Path) -> TrainedEncoder:
    """The trained encoder of a checkpoint, its data info, run config and evaluation pooling."""
    return encoder_of(load_checkpoint(path), path)


def encoder_of(ckpt: dict[str, Any], path: str | Path) -> TrainedEncoder:
    """`load_encoder` for a checkpoint already loaded (and checked) from `path`."""
    try:
        encoder = ViT(encoder_config(ckpt))
        info = checkpoint_data_info(ckpt)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: its encoder settings are invalid ({exc})") from None
    problem = f"checkpoint {path}: its weights do not fit its recorded encoder settings"
    check_fits(ckpt, encoder.state_dict(), problem, ENCODER_PREFIX)
    encoder.load_state_dict(encoder_state(ckpt))
    return TrainedEncoder(encoder.eval(), info, ckpt["hybridssl"]["config"], checkpoint_pooling(ckpt))


def timm_pretrained_cfg(cfg: ViTConfig, info: DataInfo, crop_fraction: float = 1.0) -> dict[str, Any]:
    """timm's `pretrained_cfg` fields for an encoder: the input size and normalization it was trained
    with, and our evaluation transform (shorter side resized bicubic, centre crop of `crop_fraction`
    of it: the whole side unless a fine-tune was tested otherwise)."""
    return {
        "input_size": [cfg.in_chans, cfg.image_size, cfg.image_size],
        "mean": list(info.mean),
        "std": list(info.std),
        "interpolation": "bicubic",
        "crop_pct": crop_fraction,
        "crop_mode": "center",
        "num_classes": 0,
    }


def export_encoder(checkpoint: str | Path, output: str | Path) -> dict[str, Any]:
    """Writes the encoder as safetensors with timm's key names; returns the timm kwargs to rebuild it.

    Load with `timm.create_model("vit_base_patch16_224", pretrained=False, checkpoint_path=output,
    **kwargs)`. The kwargs carry `pretrained_cfg_overlay` (the input size and mean/std the encoder was
    trained with), so `timm.data.resolve_data_config(model=model)` returns those rather than the
    registry's 0.5/0.5; they are also stored in the file's metadata ("timm_kwargs", "pretrained_cfg").
    """
    from safetensors.torch import save

    ckpt = load_checkpoint(checkpoint)
    cfg = encoder_config(ckpt)
    pretrained_cfg = timm_pretrained_cfg(cfg, checkpoint_data_info(ckpt))
    kwargs = {**cfg.timm_kwargs(), "pretrained_cfg_overlay": pretrained_cfg}
    state = {k: v.contiguous() for k, v in encoder_state(ckpt).items()}
    metadata = {
        "timm_kwargs": json.dumps(kwargs),
        "pretrained_cfg": json.dumps(pretrained_cfg),
        "hybridssl_method": ckpt["hybridssl"]["config"]["method"],
        "hybridssl_pooling": checkpoint_pooling(ckpt),
    }
    atomic_write_bytes(output, save(state, metadata=metadata))
    return kwargs


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
