"""The Python entry points that mirror the CLI: `pretrain` and `evaluate` with the same validated
settings, and `build_method` to get one method as an nn.Module for a training loop of one's own."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hybridssl.errors import ConfigError


def build_method(name: str, model: str = "vit-pico", image_size: int = 28, channels: int = 1, patch_size: int | None = None,
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None, drop_path: float = 0.0,
                 num_images: int | None = None, **method_args: Any):  # fmt: skip
    """A registered method (`hybridssl.METHODS`) around a fresh ViT, without a run config: its settings
    are `method_args`, checked as `--set method_args.KEY=...` is (an error names the field). `mean`/`std`
    default to 0.5 per channel; `num_images` (the training set's size) sizes queues as a run does (the
    paper's size otherwise). In a loop of one's own, give the optimizer `method.param_groups(wd)`
    with each group's lr times its `lr_scale`, and call `method.after_step(progress)` after every
    optimizer step (examples/own_training_loop.py)."""
    from hybridssl.config import validate_method_args
    from hybridssl.data.sources import DataInfo
    from hybridssl.methods import METHODS, Method
    from hybridssl.nn.vit import PRESETS, ViT, vit_config

    if name not in METHODS:
        raise ConfigError(f"method: unknown {name!r}; choose one of {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    if not issubclass(cls, Method):
        stages = " -> ".join(s.method for s in cls.stages(_Stub()))
        raise ConfigError(f"method: {name!r} is a multi-stage recipe ({stages}); build one of its stages, or run it with pretrain")
    if model not in PRESETS:
        raise ConfigError(f"model: unknown {model!r}; choose one of {', '.join(PRESETS)}")
    mean = tuple(mean or (0.5,) * channels)
    std = tuple(std or (0.5,) * channels)
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise ConfigError(f"mean/std: {channels} values each for {channels}-channel images, std > 0")
    try:
        encoder = ViT(vit_config(model, image_size, channels, patch_size, drop_path=drop_path))
    except ValueError as exc:
        raise ConfigError(f"patch_size: {exc}") from None
    args = validate_method_args(name, method_args)
    return cls(cls.Config.model_validate(args), encoder, DataInfo("custom", image_size, channels, mean, std, num_images=num_images))


class _Stub:
    """A run config with nothing set: enough for a recipe to list its stages."""

    method_args: dict[str, Any] = {}
    epochs = None
    init_from = None


def pretrain(config: str | os.PathLike | None = None, **settings: Any) -> Path:
    """Runs `hybridssl pretrain` from Python: `config` a YAML file or a shipped config name (as --config),
    `settings` the run config's fields (`method="mae", dataset="folder", data_dir=..., max_steps=100,
    method_args={...}`), validated as the CLI's flags are. Returns the final checkpoint."""
    from hybridssl.config import resolve
    from hybridssl.engine.stages import pretrain as run_stages
    from hybridssl.evaluation.monitor import monitor_callbacks
    from hybridssl.weights.start import init_defaults

    run_config = resolve(settings, Path(config) if config is not None else None, init_defaults)
    return run_stages(run_config, monitor_callbacks)


def evaluate(checkpoint: str | os.PathLike, protocol: str = "knn", output: str | os.PathLike = "runs/eval",
             **settings: Any) -> list[dict[str, Any]]:  # fmt: skip
    """Runs `hybridssl evaluate` from Python and returns its result rows (also appended to
    output/results.jsonl). `settings` are EvalRequest's fields: dataset, data_dir, image_size,
    limit_train, pooling, split ("validation" to choose settings), settings={"knn": {"ks": [20]}}, ..."""
    from dataclasses import fields

    from hybridssl.evaluation.run import EvalRequest
    from hybridssl.evaluation.run import evaluate as run_protocols

    known = {f.name for f in fields(EvalRequest)} - {"checkpoint", "protocol", "output"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"{unknown[0]}: not an evaluate setting; choose from {', '.join(sorted(known))}")
    for key in ("data_dir", "eval_data_dir"):
        if settings.get(key) is not None and "://" not in str(settings[key]):
            settings[key] = Path(settings[key])
    return run_protocols(EvalRequest(Path(checkpoint), settings.pop("dataset", None), protocol, Path(output), **settings))
