"""The optimizer and its per-step warmup + cosine schedule (parameter groups: nn/param_groups.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


def steps_per_epoch(batches: int, accumulate: int) -> int:
    """Optimizer steps in an epoch of `batches` batches: rounded up, because Lightning also steps at an
    epoch's end with accumulation pending."""
    return max(1, math.ceil(batches / accumulate))


@dataclass
class WarmupCosine:
    """lr factor per optimizer step: linear warmup to 1, then half-cosine down to `min_fraction`.

    A dataclass (not a lambda) so the scheduler state pickles and loads with weights_only=True.
    """

    total_steps: int
    warmup_steps: int
    min_fraction: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        t = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_fraction + (1 - self.min_fraction) * 0.5 * (1 + math.cos(math.pi * t))


def adamw(groups: list[dict[str, Any]], lr: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW with the fused kernel (one kernel for all parameters: CUDA, and CPU since torch 2.4)."""
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError):  # a device or dtype without a fused kernel
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
