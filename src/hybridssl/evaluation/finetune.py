"""End-to-end fine-tuning: the MAE / CMAE recipe scaled down to small images and short schedules.

Encoder (rebuilt with drop-path) + a linear head on the pooled tokens, AdamW, layer-wise lr decay with
MAE's exponents (`nn.param_groups.layer_decay`: stem d^(L+1), block b d^(L-b), final norm and head 1), no
weight decay on norms/biases/tokens, label smoothing, per-step linear warmup + cosine, and light
augmentation (random-resized crop + horizontal flip on the device).

Scaled-down defaults, and why: the papers fine-tune ViT-B for 100 epochs at base lr 5e-4 (batch 1024),
layer decay 0.65 for 12 blocks, with RandAugment, mixup, cutmix and random erasing. Small encoders
(6-12 blocks) on 28-96 px images get layer decay 0.75 (a shallower stack needs less discount at the
stem), 50 epochs, batch 128, base lr 1e-3, and crop + flip only (the heavy regularisers need long
schedules to pay off). Drop-path 0.1, label smoothing 0.1, weight decay 0.05 and betas (0.9, 0.999)
are the papers' values. The reported number is the test top-1 after the last epoch (never the best
epoch: that would select on the test set).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt
from torch import Tensor, nn

from hybridssl.settings import StrictModel
from hybridssl.data.sources import DataInfo
from hybridssl.data.views import crop_flip, identity, to_unit
from hybridssl.engine.optim import WarmupCosine
from hybridssl.nn.param_groups import layer_decay, param_groups
from hybridssl.evaluation.batches import epoch_batches, steps_per_epoch
from hybridssl.nn.vit import ViT, Pooling, pool


class FinetuneSettings(StrictModel):
    epochs: PositiveInt = 50
    batch_size: PositiveInt = 128
    base_lr: PositiveFloat = 1e-3  # per 256 samples
    layer_decay: float = Field(0.75, gt=0, le=1)
    weight_decay: NonNegativeFloat = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    drop_path: float = Field(0.1, ge=0, lt=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    warmup_fraction: float = Field(0.1, ge=0, lt=1)  # of all steps
    min_lr_fraction: float = Field(0.001, ge=0, le=1)  # the cosine ends at lr x this
    crop_scale: tuple[float, float] = (0.5, 1.0)
    grad_clip: PositiveFloat | None = None
    eval_batch_size: PositiveInt = 512

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


class Classifier(nn.Module):
    def __init__(self, encoder: ViT, num_classes: int, pooling: Pooling) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.head = nn.Linear(encoder.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)  # near zero: the first steps keep the features
        nn.init.zeros_(self.head.bias)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(pool(self.encoder(images), self.pooling))


@dataclass
class FinetuneResult:
    test_top1: float
    final_train_loss: float
    steps: int
    lr: float
    seconds: float


def with_drop_path(encoder: ViT, drop_path: float) -> ViT:
    """A copy of `encoder` with the same weights and the given drop-path rate (a ramp over the blocks)."""
    rebuilt = ViT(replace(encoder.cfg, drop_path=drop_path))
    rebuilt.load_state_dict(encoder.state_dict())
    return rebuilt


@torch.no_grad()
def classifier_accuracy(model: nn.Module, images: Tensor, labels: Tensor, info: DataInfo, batch_size: int, device: torch.device) -> float:
    normalize = identity(info).normalize
    model.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        x = normalize(to_unit(images[i : i + batch_size].to(device)))
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            correct += (model(x).argmax(dim=1).cpu() == labels[i : i + batch_size]).sum().item()
    return 100.0 * correct / len(images)


def finetune(
    encoder: ViT,
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    info: DataInfo,
    num_classes: int,
    pooling: Pooling,
    settings: FinetuneSettings = FinetuneSettings(),
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> FinetuneResult:
    """Fine-tunes a copy of `encoder` (uint8 images in, the caller's encoder untouched) and tests it."""
    start = time.perf_counter()
    device = torch.device(device)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = Classifier(with_drop_path(encoder, settings.drop_path), num_classes, pooling).to(device)
    lr = settings.base_lr * settings.batch_size / 256
    groups = param_groups(model.named_parameters(), settings.weight_decay, layer_decay(encoder.cfg.depth, settings.layer_decay))
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    fused = device.type == "cuda" or None
    opt = torch.optim.AdamW(groups, lr=lr, betas=settings.betas, fused=fused)
    total = settings.epochs * steps_per_epoch(len(train_images), settings.batch_size)
    warmup = int(settings.warmup_fraction * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(total, warmup, settings.min_lr_fraction))
    augment = crop_flip(info, num_views=1, scale=settings.crop_scale)
    images, labels = train_images.to(device), train_labels.to(device)
    loss = torch.zeros(())
    for _ in range(settings.epochs):
        model.train()
        for idx in epoch_batches(len(images), settings.batch_size, generator):
            idx = idx.to(device)
            (x,) = augment(images[idx])
            with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), labels[idx], label_smoothing=settings.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            opt.step()
            scheduler.step()
    top1 = classifier_accuracy(model, test_images, test_labels, info, settings.eval_batch_size, device)
    return FinetuneResult(top1, float(loss.item()), total, lr, time.perf_counter() - start)
