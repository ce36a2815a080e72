"""Linear probe on frozen features: non-affine BatchNorm + Linear (the MAE protocol), with an lr sweep.

Features are computed once (no augmentation), which makes a probe take seconds on a CPU; the head is
trained with SGD + momentum, linear warmup and cosine decay, lr scaled by batch / 256. The BatchNorm
keeps a cumulative average of the batch statistics (momentum None), so its running statistics are the
train-set statistics after one epoch, also in the one-epoch smoke runs.

The sweep (MAE-CT trains 10 lrs in parallel and reports the best) trains one head per lr in the same
pass over the features. Selection rule: the lr with the highest top-1 on a class-stratified, seeded
hold-out of the *train* features (ties: the smaller lr); that lr is then retrained on all train
features and only this head is evaluated on the test set. Test accuracy never picks anything. A choice
at either end of the sweep that beats its neighbour is warned about: the best lr may lie outside it
(`--lrs` widens it).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt
from torch import Tensor, nn

from hybridssl.settings import StrictModel
from hybridssl.engine.optim import WarmupCosine
from hybridssl.evaluation.batches import epoch_batches, steps_per_epoch
from hybridssl.evaluation.subsets import stratified_holdout


class ProbeSettings(StrictModel):
    epochs: PositiveInt = 100
    base_lr: PositiveFloat = 0.1  # per 256 samples; the sweep replaces it
    batch_size: PositiveInt = 256
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: NonNegativeFloat = 0.0
    warmup_fraction: float = Field(0.1, ge=0, lt=1)
    base_lrs: tuple[PositiveFloat, ...] = (0.01, 0.03, 0.1, 0.3, 1.0)  # the sweep
    holdout_fraction: float = Field(0.1, gt=0, lt=1)  # of the train features, for choosing the lr

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


class ProbeHeads(nn.Module):
    """Several linear heads behind one parameter-free BatchNorm: logits H x B x C."""

    def __init__(self, dim: int, num_classes: int, num_heads: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6, momentum=None)
        self.heads = nn.ModuleList(self._head(dim, num_classes) for _ in range(num_heads))

    @staticmethod
    def _head(dim: int, num_classes: int) -> nn.Linear:
        """Initialised right after creation: head i's weights depend only on the seed and i."""
        head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)
        return head

    def forward(self, features: Tensor) -> Tensor:
        x = self.norm(features)
        return torch.stack([head(x) for head in self.heads])


def train_linear_probes(features: Tensor, labels: Tensor, num_classes: int, settings: ProbeSettings, base_lrs: Sequence[float],
                        seed: int, progress: str | None = None) -> ProbeHeads:  # fmt: skip
    """Trains one head per base lr on the same batches (their gradients are independent). `progress`: a
    tqdm bar over the epochs with this description (100 epochs over ImageNet's features take minutes)."""
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ProbeHeads(features.shape[1], num_classes, len(base_lrs))
    scale = settings.batch_size / 256
    groups = [{"params": head.parameters(), "lr": lr * scale} for head, lr in zip(model.heads, base_lrs, strict=True)]
    opt = torch.optim.SGD(groups, momentum=settings.momentum, weight_decay=settings.weight_decay)  # lr: per group
    total = settings.epochs * steps_per_epoch(len(features), settings.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(total, int(settings.warmup_fraction * total)))
    model.train()
    for _ in tqdm(range(settings.epochs), desc=progress, unit="epoch", leave=False, disable=progress is None):
        for idx in epoch_batches(len(features), settings.batch_size, generator):
            logits = model(features[idx])
            loss = F.cross_entropy(logits.flatten(0, 1), labels[idx].repeat(len(base_lrs)), reduction="sum") / len(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            scheduler.step()
    return model.eval()


def train_linear_probe(features: Tensor, labels: Tensor, num_classes: int, settings: ProbeSettings, seed: int,
                       progress: str | None = None) -> ProbeHeads:  # fmt: skip
    return train_linear_probes(features, labels, num_classes, settings, [settings.base_lr], seed, progress)


def head_accuracies(model: ProbeHeads, features: Tensor, labels: Tensor) -> list[float]:
    """Top-1 in percent of every head."""
    with torch.inference_mode():
        return [100.0 * (logits.argmax(dim=1) == labels).sum().item() / len(labels) for logits in model(features)]


def linear_probe_accuracy(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
                          settings: ProbeSettings = ProbeSettings(), seed: int = 0) -> float:  # fmt: skip
    """Top-1 test accuracy (percent) of one probe at `settings.base_lr`, trained on the train features."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    model = train_linear_probe(train_features.float(), train_labels, num_classes, settings, seed)
    return head_accuracies(model, test_features.float(), test_labels)[0]


@dataclass
class SweepResult:
    test_top1: float
    selected_base_lr: float
    holdout_top1: dict[float, float]  # per base lr
    holdout_size: int


def linear_probe_sweep(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
                       settings: ProbeSettings = ProbeSettings(), seed: int = 0, progress: str | None = None) -> SweepResult:  # fmt: skip
    """The lr chosen on a train hold-out (module docstring), retrained on all train features, tested once.
    `progress`: the description of a bar for the sweep and one for the final probe."""

    def bar(what: str) -> str | None:
        return None if progress is None else f"{progress}: {what}"

    train_features, test_features = train_features.float(), test_features.float()
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    lrs = sorted(settings.base_lrs)
    fit, held = stratified_holdout(train_labels, settings.holdout_fraction, seed)
    if len(lrs) > 1 and len(held) > 0:
        heads = train_linear_probes(train_features[fit], train_labels[fit], num_classes, settings, lrs, seed, bar(f"sweep of {len(lrs)} lrs"))
        holdout = dict(zip(lrs, head_accuracies(heads, train_features[held], train_labels[held]), strict=True))
        best = max(lrs, key=lambda lr: (holdout[lr], -lr))
        warn_at_the_edge(holdout, best)
    else:
        holdout, best = {}, lrs[0]
    final = train_linear_probe(train_features, train_labels, num_classes, settings.model_copy(update={"base_lr": best}), seed,
                               bar(f"lr {best:g} on every train feature"))  # fmt: skip
    test = head_accuracies(final, test_features, test_labels)[0]
    return SweepResult(test, best, holdout, len(held) if holdout else 0)


def warn_at_the_edge(holdout: dict[float, float], best: float) -> None:
    """A choice at an end of the sweep that beats its neighbour may be short of the best lr (a tie
    with the neighbour is not: ties go to the smaller lr by rule)."""
    lrs = sorted(holdout)  # distinct: `--lrs 0.1,0.1` sweeps one lr
    if len(lrs) < 2:
        return
    neighbour = {lrs[0]: lrs[1], lrs[-1]: lrs[-2]}.get(best)
    if neighbour is not None and holdout[best] > holdout[neighbour]:
        end = "largest" if best == lrs[-1] else "smallest"
        warnings.warn(f"linear probe: the hold-out chose the {end} base lr of the sweep ({best:g} of "
                      f"{', '.join(f'{lr:g}' for lr in lrs)}); a wider sweep (--lrs) may do better", stacklevel=3)
