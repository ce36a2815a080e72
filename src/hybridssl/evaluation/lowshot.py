"""Low-shot evaluation (MAE-CT's protocol): train with few labels, several seeds, mean and std.

Subsets are class-balanced and seeded (`subsets.py`): by default 1% and 10% of the labels and 1, 2, 5
and 10 images per class. Seed i draws subset i, and every head (linear probe, fine-tune) is trained on
the same subset, so the heads are compared on the same images. The probes cannot choose their lr on a
hold-out (there are no spare labels), so they use a fixed lr: `probe_base_lr`, MAE's probe default.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import PositiveFloat, PositiveInt, field_validator
from torch import Tensor

from hybridssl.settings import StrictModel
from hybridssl.evaluation.subsets import SubsetSpec

Head = Literal["linear", "finetune"]


class LowshotSettings(StrictModel):
    subsets: tuple[str, ...] = ("1%", "10%", "1/class", "2/class", "5/class", "10/class")
    seeds: PositiveInt = 3
    heads: tuple[Head, ...] = ("linear", "finetune")
    probe_base_lr: PositiveFloat = 0.1

    @field_validator("subsets")
    @classmethod
    def _parse(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(SubsetSpec.parse(str(s)).name for s in v)

    @property
    def specs(self) -> list[SubsetSpec]:
        return [SubsetSpec.parse(s.removesuffix("/class")) for s in self.subsets]

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


@dataclass
class LowshotResult:
    head: str
    subset: str
    labelled: int  # images in the subset (equal for every seed)
    seeds: list[int]
    per_seed: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.per_seed)

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (0 for a single seed)."""
        return statistics.stdev(self.per_seed) if len(self.per_seed) > 1 else 0.0


Trainer = Callable[[Tensor, int], float]  # (subset indices, seed) -> test top-1


def lowshot_trials(train_labels: Tensor, settings: LowshotSettings, heads: dict[str, Trainer], base_seed: int = 0,
                   progress: str | None = None) -> list[LowshotResult]:  # fmt: skip
    """Every head on every subset and seed. `progress`: a tqdm bar over the trials (subsets x seeds x
    heads; each trains a head, a fine-tune among them) with this description."""
    from tqdm.auto import tqdm

    results: list[LowshotResult] = []
    total = len(settings.specs) * settings.seeds * len(heads)
    with tqdm(total=total, desc=progress, unit="trial", leave=False, disable=progress is None) as bar:
        for spec in settings.specs:
            seeds = [base_seed + i for i in range(settings.seeds)]
            runs: dict[str, list[float]] = {head: [] for head in heads}
            size = 0
            for seed in seeds:
                try:
                    idx = spec.indices(train_labels, seed)
                except ValueError as exc:
                    raise ValueError(f"lowshot subset {spec.name}: {exc}; use more train images or other --lowshot-subsets") from None
                size = len(idx)
                for head, train in heads.items():
                    bar.set_postfix_str(f"{head} on {spec.name}, seed {seed}")
                    runs[head].append(train(idx, seed))
                    bar.update()
            results += [LowshotResult(head, spec.name, size, seeds, values) for head, values in runs.items()]
    return results
