"""The EMA of the encoder that MIM-Refiner (and MAE-CT's official code) keep beside training, for evaluation.

It follows the encoder after every optimizer step and never enters a loss: training is the same with or
without it, and the checkpoint holds it (`encoder_ema.module.*`) for `load_trained_encoder(..., ema=True)`.
Its per-step momentum m is either given (the papers' 0.9999, set at ImageNet scale) or sized to the run:
m = 0.5 ^ (1 / (h T)) for a run of T optimizer steps, so that the weight of a step in the average halves
after a fraction h of the run (`half_life`). The default h = 0.185 gives back the paper's 0.9999 for its
ViT-L/16 stage 3 (30 epochs of ImageNet-1k at batch 1024: 37,530 steps; 0.9999 halves after 6,931).
A fixed 0.9999 on a run of 2,000 steps would still weigh the starting encoder by 0.82 at its end.

The method is built before the run's length is known; the engine's `progress` (steps done / T) tells
it: the EMA counts its updates in a buffer (a resume continues the count) and T = count / progress.
"""

from __future__ import annotations

import torch
from torch import nn

from hybridssl.nn.momentum import EMA

PAPER_HALF_LIFE = 0.185  # of the run: 0.9999 over MIM-Refiner's 37,530-step ViT-L/16 stage 3


def half_life_momentum(total_steps: int, half_life: float = PAPER_HALF_LIFE) -> float:
    """The per-step momentum under which a step's weight halves after `half_life` x `total_steps` steps
    (at least one step)."""
    return 0.5 ** (1.0 / max(1.0, half_life * total_steps))


class EncoderEMA(EMA):
    """An EMA copy of the encoder (parameters averaged, buffers copied) with a fixed `momentum`, or, with
    None, the momentum sized to the run by `half_life` (module docstring)."""

    def __init__(self, encoder: nn.Module, momentum: float | None = None, half_life: float = PAPER_HALF_LIFE) -> None:
        super().__init__(encoder, copy_buffers=True)
        self.momentum = momentum
        self.half_life = half_life
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def momentum_at(self, progress: float) -> float:
        """The momentum of the update that has just been counted, `progress` (0, 1] into the run."""
        if self.momentum is not None:
            return self.momentum
        total_steps = max(1, round(int(self.updates) / max(progress, 1e-12)))
        return half_life_momentum(total_steps, self.half_life)

    def step(self, encoder: nn.Module, progress: float) -> None:
        """One update after an optimizer step: EMA <- m EMA + (1 - m) encoder; the encoder is only read."""
        self.updates += 1
        self.update(encoder, self.momentum_at(progress))

    def restart(self, encoder: nn.Module) -> None:
        """A copy of `encoder` with no update counted: a new run's EMA starts from the encoder it starts
        with (the official callback clones it before the first step), even if the weights it was
        initialized from held an EMA of their own."""
        self.update(encoder, 0.0)
        self.updates.zero_()
