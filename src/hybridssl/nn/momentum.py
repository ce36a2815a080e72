"""EMA ("momentum") copies of modules and the momentum schedules (docs/methods.md A6)."""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
from torch import nn

Schedule = Literal["constant", "cosine"]


def momentum_at(progress: float, start: float, end: float = 1.0, schedule: Schedule = "constant") -> float:
    """constant: `start`; cosine: from `start` at progress 0 to `end` at progress 1 (MoCo v3: 0.99 -> 1)."""
    if schedule == "constant":
        return start
    if schedule != "cosine":
        raise ValueError(f"momentum schedule must be constant or cosine, got {schedule!r}")
    return end - (end - start) * (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1) / 2


class EMA(nn.Module):
    """A frozen copy of `source` that follows it: target <- m * target + (1 - m) * source.

    With `copy_buffers`, buffers (BatchNorm running statistics) are copied rather than averaged, as
    MAE-CT does for its target projector. The copy lives in the state dict, so it survives a resume.
    """

    def __init__(self, source: nn.Module, copy_buffers: bool = True) -> None:
        super().__init__()
        self.module = copy.deepcopy(source).requires_grad_(False)
        self.copy_buffers = copy_buffers

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def update(self, source: nn.Module, momentum: float) -> None:
        with torch.no_grad():
            targets = [p for p in self.module.parameters()]
            sources = [p.detach() for p in source.parameters()]
            if len(targets) != len(sources):
                raise ValueError("EMA source and target have different parameters")
            if momentum == 0.0:
                torch._foreach_copy_(targets, sources)
            elif momentum != 1.0:
                torch._foreach_lerp_(targets, sources, 1.0 - momentum)
            if self.copy_buffers:
                target_buffers, source_buffers = list(self.module.buffers()), list(source.buffers())
                if len(target_buffers) != len(source_buffers):
                    raise ValueError("EMA source and target have different buffers")
                for target, buffer in zip(target_buffers, source_buffers, strict=True):
                    target.copy_(buffer)
