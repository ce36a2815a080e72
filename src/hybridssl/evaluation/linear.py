"""Linear probe on frozen features: non-affine BatchNorm + Linear (the MAE protocol).

Features are computed once (no augmentation), which makes a probe take seconds on a CPU; the head is
trained with SGD + momentum, linear warmup and cosine decay, lr scaled by batch / 256.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class ProbeSettings:
    epochs: int = 100
    base_lr: float = 0.1  # per 256 samples
    batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup_fraction: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


def linear_head(dim: int, num_classes: int) -> nn.Module:
    head = nn.Linear(dim, num_classes)
    nn.init.trunc_normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), head)


def train_linear_probe(features: Tensor, labels: Tensor, num_classes: int, settings: ProbeSettings, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = linear_head(features.shape[1], num_classes)
    lr = settings.base_lr * settings.batch_size / 256
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    steps_per_epoch = max(1, len(features) // settings.batch_size)
    total = settings.epochs * steps_per_epoch
    warmup = int(settings.warmup_fraction * total)
    schedule = lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    model.train()
    for _ in range(settings.epochs):
        order = torch.randperm(len(features), generator=generator)
        for i in range(steps_per_epoch):
            idx = order[i * settings.batch_size : (i + 1) * settings.batch_size]
            loss = F.cross_entropy(model(features[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            scheduler.step()
    return model.eval()


@torch.inference_mode()
def accuracy(model: nn.Module, features: Tensor, labels: Tensor) -> float:
    return 100.0 * (model(features).argmax(dim=1) == labels).float().mean().item()


def linear_probe_accuracy(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
                          settings: ProbeSettings = ProbeSettings(), seed: int = 0) -> float:  # fmt: skip
    """Top-1 test accuracy (percent) of a linear probe trained on the train features."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    model = train_linear_probe(train_features.float(), train_labels, num_classes, settings, seed)
    return accuracy(model, test_features.float(), test_labels)
