"""The bottom layer of every settings model: strict pydantic models, one-line errors, the optimizer.

Methods, evaluation protocols and the run config all build on these; the run config itself
(config.py) sits above the methods because it needs their registry.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, ValidationError, field_validator

from hybridssl.errors import ConfigError

__all__ = ["ConfigError", "OptimConfig", "StrictModel", "deep_merge", "format_validation_error", "validated"]


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


def validated(model: type[BaseModel], values: dict[str, Any], prefix: str = "") -> Any:
    """`model.model_validate(values)`, or one ConfigError line naming every bad field under `prefix`."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix)) from None


def renamed_settings(renames: dict[str, str]) -> Callable[[type, Any], Any]:
    """A `model_validator(mode="before")` that accepts the old names of renamed settings, with a warning
    naming the new one (a config written before the rename still runs, and says how to update it)."""

    def accept_old_names(cls: type, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        values = dict(values)
        for old, new in renames.items():
            if old in values:
                warnings.warn(f"setting {old!r} is now called {new!r}; please rename it", FutureWarning, stacklevel=2)
                values.setdefault(new, values.pop(old))
        return values

    return classmethod(accept_old_names)  # type: ignore[return-value]


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
