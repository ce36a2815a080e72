"""Class-balanced, seeded subsets of a labelled split: low-shot training sets and probe hold-outs.

Every subset is drawn per class, so each class keeps its share (k-per-class subsets: exactly k of every
class; percentage subsets: round(p * n_c) of class c, at least one), and the same (labels, seed) always
gives the same indices.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor


def half_up(x: float) -> int:
    """Rounds halves up (2.5 -> 3), unlike Python's round (2.5 -> 2)."""
    return math.floor(x + 0.5)


def _per_class_order(labels: Tensor, seed: int) -> dict[int, Tensor]:
    """For every class, its sample indices in a seeded random order."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    shuffled = labels[order]
    return {int(c): order[shuffled == c] for c in labels.unique()}


def per_class_subset(labels: Tensor, per_class: int, seed: int) -> Tensor:
    """Sorted indices of `per_class` random samples of every class (fails if a class has fewer)."""
    chosen = []
    for c, idx in _per_class_order(labels, seed).items():
        if len(idx) < per_class:
            raise ValueError(f"class {c} has {len(idx)} samples, fewer than the {per_class} per class asked for")
        chosen.append(idx[:per_class])
    return torch.cat(chosen).sort().values


def fraction_subset(labels: Tensor, fraction: float, seed: int) -> Tensor:
    """Sorted indices of round(fraction * n_c) (at least 1) random samples of every class c."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    chosen = [idx[: max(1, half_up(fraction * len(idx)))] for idx in _per_class_order(labels, seed).values()]
    return torch.cat(chosen).sort().values


def stratified_holdout(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(fit, holdout) indices: round(fraction * n_c) of each class with at least 2 samples is held out."""
    fit, held = [], []
    for idx in _per_class_order(labels, seed).values():
        n_held = min(len(idx) - 1, max(1, half_up(fraction * len(idx)))) if len(idx) >= 2 else 0
        held.append(idx[:n_held])
        fit.append(idx[n_held:])
    return torch.cat(fit).sort().values, torch.cat(held).sort().values


@dataclass(frozen=True)
class SubsetSpec:
    """A low-shot training set: a percentage of the labels ("1%") or k images per class ("5/class")."""

    fraction: float | None = None
    per_class: int | None = None

    @property
    def name(self) -> str:
        return f"{self.fraction * 100:g}%" if self.fraction is not None else f"{self.per_class}/class"

    def indices(self, labels: Tensor, seed: int) -> Tensor:
        if self.fraction is not None:
            return fraction_subset(labels, self.fraction, seed)
        return per_class_subset(labels, self.per_class, seed)

    @classmethod
    def parse(cls, text: str) -> "SubsetSpec":
        """'1%' or '0.5%' -> a fraction of the labels; '5' or '5/class' -> 5 images per class."""
        text = text.strip()
        if m := re.fullmatch(r"(\d+(?:\.\d+)?)%", text):
            percent = float(m.group(1))
            if not 0 < percent <= 100:
                raise ValueError(f"a percentage subset must be in (0%, 100%], got {text!r}")
            return cls(fraction=percent / 100)
        if m := re.fullmatch(r"(\d+)(?:/class)?", text):
            if int(m.group(1)) <= 0:
                raise ValueError(f"images per class must be positive, got {text!r}")
            return cls(per_class=int(m.group(1)))
        raise ValueError(f"expected a percentage like 1% or a count per class like 5, got {text!r}")
