"""The run config: typed, validated before anything runs, saved beside the checkpoints.

Layers, later ones winning: built-in defaults < the method's defaults < the YAML file < CLI flags.
Every error becomes one `ConfigError` line that names the field.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, NonNegativeInt, PositiveInt, ValidationError, ValidationInfo, field_validator
from pydantic import model_validator

from hybridssl.shipped_configs import find_config
from hybridssl.settings import ConfigError, OptimConfig, StrictModel, deep_merge, format_validation_error, validated


class RunConfig(StrictModel):
    method: str
    dataset: str = "fashion-mnist"
    data_dir: Path | None = None  # a URL (s3://...) stays a string: packed shards on object storage
    download: bool = False
    # folder and shards datasets: the training resolution (crops are cut to it); None: the images' median
    # shorter side, at most 224, in whole patches (nn.vit.default_image_size); named datasets have their own
    image_size: PositiveInt | None = None
    channels: Literal[1, 3] = 3  # folder datasets only
    strict_data: bool = False  # folder datasets: an unreadable image is an error, not a warning
    # folder datasets: decode everything into memory first ("memory": fastest for small data) or stream the
    # files through DataLoader workers ("stream"); "auto": memory up to MEMORY_BUDGET_BYTES decoded, else stream
    loader: Literal["auto", "memory", "stream"] = "auto"
    num_workers: NonNegativeInt | None = None  # streaming: decoding processes per rank; None: min(8, (CPUs - 1) / devices, own CPUs - 1)
    limit_train: PositiveInt | None = None
    model: str = "vit-pico"
    patch_size: PositiveInt | None = None  # default: 4 px up to 32 px images, 8 up to 96, else 16
    drop_path: float = Field(0.0, ge=0, lt=1)
    epochs: PositiveInt | None = None
    max_steps: PositiveInt | None = None
    batch_size: PositiveInt = 256  # per device
    accumulate_grad_batches: PositiveInt = 1
    optim: OptimConfig = OptimConfig()
    method_args: dict[str, Any] = Field(default_factory=dict)
    seed: NonNegativeInt = 0
    checkpoint_every_steps: PositiveInt | None = None
    checkpoint_every_epochs: PositiveInt = 1
    # periodic checkpoints kept on disk: the newest N (an older one is deleted once the next is written);
    # None keeps every one (ViT-B at 224 px with its optimizer state: 1.0 GB for MAE, 1.7 GB for MoCo v3)
    keep_checkpoints: PositiveInt | None = None
    devices: PositiveInt | Literal["auto"] = 1
    # DDP: each rank loads and augments only its own rows of the global batch (per-rank draws); true: every
    # rank augments the whole global batch and keeps its rows, so N ranks draw exactly what one process
    # draws (N x the augmentation work: for equivalence tests)
    global_batch_views: bool = False
    # activation checkpointing of every transformer block (encoder and decoders): each block's activations
    # are recomputed in the backward, for a larger batch per GPU (ViT-B/L) at 17-22% more FLOPs per step
    # (measured, BENCHMARKS.md)
    grad_checkpointing: bool = False
    compile: bool = False  # torch.compile the method's forward (measured 1.04x on CPU after ~40 s; BENCHMARKS.md)
    num_nodes: PositiveInt = 1
    accelerator: Literal["cpu", "gpu", "cuda", "mps", "auto"] = "auto"
    precision: Literal["auto", "32-true", "bf16-mixed"] = "auto"
    output: Path | None = None
    resume: bool = False
    init_from: Path | None = None
    log_every_n_steps: PositiveInt = 10
    progress_bar: bool = True
    knn_monitor_every_epochs: NonNegativeInt = 0  # online k-NN of the encoder every N epochs; 0 = off
    knn_monitor_samples: PositiveInt = 5000  # labelled training images in the k-NN bank (and test queries)
    knn_monitor_k: PositiveInt = 20

    @field_validator("data_dir", mode="wrap")
    @classmethod
    def _url_or_path(cls, v: Any, handler: Any) -> Any:
        return v if isinstance(v, str) and "://" in v else handler(v)

    @field_validator("method", "dataset", "model")
    @classmethod
    def _known_name(cls, v: str, info: ValidationInfo) -> str:
        """Registry names are checked in the second pass only: the registries import torch (see resolve)."""
        if info.context and info.context.get("names") is False:
            return v
        known = registry(info.field_name)
        if v not in known:
            raise ValueError(f"unknown {info.field_name} {v!r}; choose one of {', '.join(known)}")
        return v

    @model_validator(mode="after")
    def _budget_and_output(self) -> "RunConfig":
        if self.epochs is None and self.max_steps is None:
            self.epochs = 100
        if self.output is None:
            self.output = Path("runs") / f"{self.method}-{self.dataset}"
        return self

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _normalize_keys(d: dict[str, Any]) -> dict[str, Any]:
    """YAML may use the flag spelling (batch-size) or the field spelling (batch_size)."""
    return {k.replace("-", "_"): _normalize_keys(v) if isinstance(v, dict) and k != "method_args" else v for k, v in d.items()}


def read_yaml(path: Path) -> dict[str, Any]:
    """A config file, or a shipped config by name (`mae/imagenet-vit-b16`: shipped_configs.py)."""
    path = find_config(Path(path))
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path} must hold a mapping of settings, not {type(data).__name__}")
    return _normalize_keys(data)


def registry(field: str) -> list[str]:
    """The names `method`, `dataset` or `model` may take."""
    if field == "method":
        from hybridssl.methods import METHODS

        return sorted(METHODS)
    if field == "dataset":
        from hybridssl.data.sources import DATASETS

        return list(DATASETS)
    from hybridssl.nn.vit import PRESETS

    return list(PRESETS)


# Settings a run's starting point decides when the user does not (weights/start.init_defaults
# reads an --init-from file's architecture): called with the settings given, returns a layer of defaults.
StartDefaults = Callable[[dict[str, Any]], dict[str, Any]]


def resolve(flags: dict[str, Any], config_file: Path | None = None, start_defaults: StartDefaults | None = None) -> RunConfig:
    """Builds the validated run config from a YAML file and CLI flags (None = not given).

    Two passes: the file and flags alone first, without the registries (an out-of-range number fails
    in well under a second, before torch is imported); then with the method's defaults and every name
    checked against its registry. `start_defaults` adds a layer between the method's defaults and the
    file: what the --init-from checkpoint says (its model, patch size, image size)."""
    file_layer = read_yaml(config_file) if config_file else {}
    flag_layer = _normalize_keys({k: v for k, v in flags.items() if v is not None})
    given = deep_merge(file_layer, flag_layer)
    if given.get("method") is None:
        raise ConfigError("method: required (--method NAME or `method:` in the config file)")
    try:
        RunConfig.model_validate(given, context={"names": False})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    from hybridssl.methods import METHODS

    method = given["method"]
    defaults = METHODS[method].run_defaults if method in METHODS else {}
    if start_defaults is not None:
        defaults = deep_merge(defaults, start_defaults(given))
    run_config = validated(RunConfig, deep_merge(defaults, given))
    run_config.method_args = validate_method_args(run_config.method, run_config.method_args)
    return run_config


def validate_method_args(method: str, args: dict[str, Any]) -> dict[str, Any]:
    """Checks the method's own settings and fills in its defaults, so the saved config shows all."""
    from hybridssl.methods import METHODS

    return validated(METHODS[method].Config, args, prefix="method_args.").model_dump(mode="json")
