"""An encoder written as timm's ViT: safetensors with timm's key names and, in the file's metadata,
the `timm.create_model` kwargs that rebuild it with the features it was trained and evaluated with.

The pooling is part of the model, not only of the metadata: CLS pooling is timm's `global_pool="token"`,
the mean of the patch tokens is `global_pool="avg"` with `fc_norm=False` (timm then applies the final
norm to every token before averaging, as our ViT does). So `model(x)` of the rebuilt model returns
exactly what `hybridssl.load_encoder(path).embed` returns for the same normalised input, and
`timm.data.resolve_data_config(model=model)` gives the input size and mean/std it was trained with.
Layer scale and register tokens are timm's `init_values` and `reg_tokens`; registers come with
`no_embed_class` (as timm's `vit_*_reg4_dinov2`), so the file's CLS position is folded into
`cls_token` (nn/vit.timm_state_dict) and reading it back restores ours (weights/released.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hybridssl.data.sources import DataInfo
from hybridssl.errors import CheckpointError, ConfigError
from hybridssl.files import atomic_write_bytes
from hybridssl.nn.vit import Pooling, ViT, ViTConfig, pool, timm_state_dict
from hybridssl.weights.loading import load_trained_encoder
from hybridssl.weights.ours import TrainedEncoder

TIMM_ARCHITECTURE = "vit_base_patch16_224"  # any timm ViT name: the kwargs set every size


def timm_pooling(pooling: Pooling) -> dict[str, Any]:
    """timm's head settings that pool like ours (module docstring)."""
    return {"global_pool": "token"} if pooling == "cls" else {"global_pool": "avg", "fc_norm": False}


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


def timm_encoder_kwargs(trained: TrainedEncoder) -> dict[str, Any]:
    """Arguments for `timm.create_model(TIMM_ARCHITECTURE, **kwargs)` that rebuild the encoder, its pooling
    and its data config."""
    cfg = trained.encoder.cfg
    overlay = timm_pretrained_cfg(cfg, trained.info)
    return {**cfg.timm_kwargs(), **timm_pooling(trained.pooling), "pretrained_cfg_overlay": overlay}


def export_encoder(checkpoint: str | Path, output: str | Path, image_size: int | None = None) -> dict[str, Any]:
    """Writes the encoder of any file `load_encoder` reads (at `image_size`, default its own) as timm
    safetensors, after checking that timm rebuilt from the bytes computes what our encoder computes;
    returns the timm kwargs (also in the file's metadata: "timm_kwargs", "timm_model", "pretrained_cfg")."""
    from safetensors.torch import load, save

    if Path(output).suffix != ".safetensors":  # timm reads a checkpoint_path as safetensors by its suffix only
        raise ConfigError(f"output: {output} must end in .safetensors (timm chooses its reader by the name)")
    trained = load_trained_encoder(checkpoint, image_size)
    kwargs = timm_encoder_kwargs(trained)
    cfg = trained.encoder.cfg  # with registers timm's layout folds the CLS position into cls_token
    state = {k: v.detach().cpu().contiguous() for k, v in timm_state_dict(trained.encoder.state_dict(), cfg).items()}
    metadata = {
        "timm_model": TIMM_ARCHITECTURE,
        "timm_kwargs": json.dumps(kwargs),
        "pretrained_cfg": json.dumps(kwargs["pretrained_cfg_overlay"]),
        "hybridssl_method": str(trained.config.get("method")),
        "hybridssl_pooling": trained.pooling,
    }
    data = save(state, metadata=metadata)
    verify_timm(load(data), kwargs, trained.encoder, trained.pooling, output)
    atomic_write_bytes(output, data)
    return kwargs


@torch.inference_mode()
def verify_timm(state: dict[str, Tensor], kwargs: dict[str, Any], encoder: ViT, pooling: Pooling, output: str | Path) -> None:
    """A one-line CheckpointError, and no file written, when timm rebuilt from `state` and `kwargs` does
    not load every tensor or does not compute the encoder's pooled features on a random input."""
    import timm

    model = timm.create_model(TIMM_ARCHITECTURE, pretrained=False, **kwargs).eval()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"export {output}: timm does not load the tensors written ({str(exc).splitlines()[0][:200]})") from None
    cfg = encoder.cfg
    x = torch.randn(2, cfg.in_chans, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0))
    ours, theirs = pool(encoder.cpu().eval()(x), pooling), model(x)
    if ours.shape != theirs.shape or not torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4):
        raise CheckpointError(f"export {output}: timm's model computes other features than the encoder written; nothing written")
