"""Atomic checkpoint writes, safe loads, and encoder export with timm key names."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from hybridssl.data.sources import DataInfo
from hybridssl.nn.vit import ViT, ViTConfig

ENCODER_PREFIX = "method.encoder."


class CheckpointError(ValueError):
    """A file that is not a usable hybridssl checkpoint; the message names it."""


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`.

    A kill at any moment leaves either the previous file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Loads with weights_only=True: tensors and plain containers only, never arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or torn files
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(ckpt, dict) or "hybridssl" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a hybridssl checkpoint (no 'hybridssl' metadata)")
    return ckpt


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


def load_encoder(path: str | Path) -> tuple[ViT, DataInfo, dict[str, Any]]:
    """The trained encoder of a checkpoint, its data info and the run config it was trained with."""
    ckpt = load_checkpoint(path)
    encoder = ViT(encoder_config(ckpt))
    encoder.load_state_dict(encoder_state(ckpt))
    return encoder.eval(), checkpoint_data_info(ckpt), ckpt["hybridssl"]["config"]


def export_encoder(checkpoint: str | Path, output: str | Path) -> dict[str, Any]:
    """Writes the encoder as safetensors with timm's key names; returns the timm kwargs to rebuild it.

    Load with `timm.create_model("vit_base_patch16_224", pretrained=False, checkpoint_path=output,
    **kwargs)`; the kwargs are also stored in the file's metadata under "timm_kwargs".
    """
    from safetensors.torch import save_file

    ckpt = load_checkpoint(checkpoint)
    kwargs = encoder_config(ckpt).timm_kwargs()
    state = {k: v.contiguous() for k, v in encoder_state(ckpt).items()}
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    metadata = {"timm_kwargs": json.dumps(kwargs), "hybridssl_method": ckpt["hybridssl"]["config"]["method"]}
    save_file(state, str(tmp), metadata=metadata)
    tmp.replace(output)
    return kwargs


def load_method(path: str | Path):
    """The whole trained method (encoder, decoders, heads) of a checkpoint, in eval mode."""
    from hybridssl.config import RunConfig
    from hybridssl.methods.base import build_method

    ckpt = load_checkpoint(path)
    run = RunConfig.model_validate(ckpt["hybridssl"]["config"])
    method = build_method(run, checkpoint_data_info(ckpt))
    method.load_state_dict({k.removeprefix("method."): v for k, v in ckpt["state_dict"].items()})
    return method.eval()
