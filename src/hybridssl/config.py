"""The run config: typed, validated before anything runs, saved beside the checkpoints.

Layers, later ones winning: built-in defaults < the method's defaults < the YAML file < CLI flags.
Every error becomes one `ConfigError` line that names the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt, ValidationError
from pydantic import field_validator, model_validator


class ConfigError(ValueError):
    """An invalid setting; the message names the field."""


class StrictModel(BaseModel):
    # unknown keys are errors; so are nan and inf, which no setting has a use for
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)


class OptimConfig(StrictModel):
    base_lr: PositiveFloat = 1.5e-4  # for a batch of 256; the engine scales by the effective batch
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_fraction: float = Field(0.05, ge=0, lt=1)  # of all optimizer steps
    warmup_epochs: float | None = Field(None, ge=0)  # overrides warmup_fraction when set
    min_lr_fraction: float = Field(0.0, ge=0, le=1)  # cosine ends at base_lr x this
    grad_clip: PositiveFloat | None = None

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError("both betas must be in [0, 1)")
        return v


class RunConfig(StrictModel):
    method: str
    dataset: str = "fashion-mnist"
    data_dir: Path | None = None
    download: bool = False
    image_size: PositiveInt = 64  # folder datasets are decoded to this size
    channels: Literal[1, 3] = 3  # folder datasets only
    strict_data: bool = False  # folder datasets: an unreadable image is an error, not a warning
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
    devices: PositiveInt | Literal["auto"] = 1
    # DDP: every rank augments the whole global batch and keeps its rows, so N ranks draw exactly what
    # one process draws (N x the augmentation work); false: each rank augments only its own rows
    global_batch_views: bool = True
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

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from hybridssl.methods import METHODS

        if v not in METHODS:
            raise ValueError(f"unknown method {v!r}; choose one of {', '.join(sorted(METHODS))}")
        return v

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        from hybridssl.data.sources import DATASETS

        if v not in DATASETS:
            raise ValueError(f"unknown dataset {v!r}; choose one of {', '.join(DATASETS)}")
        return v

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        from hybridssl.nn.vit import PRESETS

        if v not in PRESETS:
            raise ValueError(f"unknown model {v!r}; choose one of {', '.join(PRESETS)}")
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


def format_validation_error(error: ValidationError, prefix: str = "") -> str:
    parts = []
    for e in error.errors():
        field = prefix + ".".join(str(x) for x in e["loc"]) if e["loc"] else prefix.rstrip(".") or "config"
        message = e["msg"].removeprefix("Value error, ")
        value = e.get("input")
        hidden = e["type"] in ("missing", "extra_forbidden") or isinstance(value, dict) or repr(value) in message
        shown = "" if hidden else f" (got {value!r})"
        if e["type"] == "extra_forbidden":
            message = "unknown setting"
        parts.append(f"{field}: {message}{shown}")
    return "; ".join(parts)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _normalize_keys(d: dict[str, Any]) -> dict[str, Any]:
    """YAML may use the flag spelling (batch-size) or the field spelling (batch_size)."""
    return {k.replace("-", "_"): _normalize_keys(v) if isinstance(v, dict) and k != "method_args" else v for k, v in d.items()}


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config: file {path} not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path} must hold a mapping of settings, not {type(data).__name__}")
    return _normalize_keys(data)


def resolve(flags: dict[str, Any], config_file: Path | None = None) -> RunConfig:
    """Builds the validated run config from a YAML file and CLI flags (None = not given)."""
    from hybridssl.methods import METHODS

    file_layer = read_yaml(config_file) if config_file else {}
    flag_layer = _normalize_keys({k: v for k, v in flags.items() if v is not None})
    method = flag_layer.get("method", file_layer.get("method"))
    if method is None:
        raise ConfigError("method: required (--method NAME or `method:` in the config file)")
    defaults = METHODS[method].run_defaults if method in METHODS else {}
    merged = deep_merge(deep_merge(defaults, file_layer), flag_layer)
    try:
        run = RunConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    run.method_args = validate_method_args(run.method, run.method_args)
    return run


def validate_method_args(method: str, args: dict[str, Any]) -> dict[str, Any]:
    """Checks the method's own settings and fills in its defaults, so the saved config shows all."""
    from hybridssl.methods import METHODS

    try:
        return METHODS[method].Config.model_validate(args).model_dump(mode="json")
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix="method_args.")) from None


def atomic_write_text(path: Path, text: str) -> None:
    """Writes a temporary file beside `path`, then renames it: a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def save_yaml(data: dict[str, Any], path: Path) -> None:
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
