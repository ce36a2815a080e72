"""Atomic checkpoint writes, safe loads, and encoder export with timm key names."""

from __future__ import annotations

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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Loads with weights_only=True: tensors and plain containers only, never arbitrary objects.
    `mmap` reads tensors lazily (cheap when only the metadata is needed)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises many types for foreign or torn files
        raise CheckpointError(f"{path} is not a readable checkpoint ({load_failure(exc)})") from None
    if not isinstance(ckpt, dict) or "hybridssl" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a hybridssl checkpoint (no 'hybridssl' metadata)")
    meta = ckpt["hybridssl"]
    if not isinstance(meta, dict) or not {"config", "encoder", "data_info"} <= meta.keys():
        raise CheckpointError(f"{path} is not a hybridssl checkpoint (incomplete 'hybridssl' metadata)")
    return ckpt


def trained_with(ckpt: dict[str, Any]) -> str:
    config = ckpt["hybridssl"]["config"]
    return f"method {config.get('method')} / model {config.get('model')}"


def check_fits(ckpt: dict[str, Any], own: dict[str, torch.Tensor], problem: str, prefix: str = "") -> None:
    """Raises one CheckpointError line, `problem` followed by the first entry that does not fit, when
    the checkpoint's entries named in `own` (keys without `prefix`) are missing or shaped differently."""
    theirs = {k.removeprefix(prefix): v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    for key, value in own.items():
        found = theirs.get(key)
        if found is None or tuple(found.shape) != tuple(value.shape):
            detail = "missing" if found is None else f"{tuple(found.shape)}, not {tuple(value.shape)}"
            raise CheckpointError(f"{problem} ({key}: {detail})")


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
    ckpt = load_checkpoint(path)
    try:
        encoder = ViT(encoder_config(ckpt))
        info = checkpoint_data_info(ckpt)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: its encoder settings are invalid ({exc})") from None
    problem = f"checkpoint {path}: its weights do not fit its recorded encoder settings"
    check_fits(ckpt, encoder.state_dict(), problem, ENCODER_PREFIX)
    encoder.load_state_dict(encoder_state(ckpt))
    return TrainedEncoder(encoder.eval(), info, ckpt["hybridssl"]["config"], checkpoint_pooling(ckpt))


def export_encoder(checkpoint: str | Path, output: str | Path) -> dict[str, Any]:
    """Writes the encoder as safetensors with timm's key names; returns the timm kwargs to rebuild it.

    Load with `timm.create_model("vit_base_patch16_224", pretrained=False, checkpoint_path=output,
    **kwargs)`; the kwargs are also stored in the file's metadata under "timm_kwargs".
    """
    from safetensors.torch import save

    ckpt = load_checkpoint(checkpoint)
    kwargs = encoder_config(ckpt).timm_kwargs()
    state = {k: v.contiguous() for k, v in encoder_state(ckpt).items()}
    metadata = {"timm_kwargs": json.dumps(kwargs), "hybridssl_method": ckpt["hybridssl"]["config"]["method"]}
    atomic_write_bytes(output, save(state, metadata=metadata))
    return kwargs


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
