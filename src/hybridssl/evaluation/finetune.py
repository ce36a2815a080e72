"""End-to-end fine-tuning: the MAE / CMAE recipe scaled down to small images and short schedules.

Encoder (rebuilt with drop-path) + a linear head on the pooled tokens, AdamW, layer-wise lr decay with
MAE's exponents (`nn.param_groups.layer_decay`: stem d^(L+1), block b d^(L-b), final norm and head 1), no
weight decay on norms/biases/tokens, label smoothing, per-step linear warmup + cosine, and light
augmentation (random-resized crop + horizontal flip on the device) unless the papers' regularisers are
switched on.

Scaled-down defaults, and why: the papers fine-tune ViT-B for 100 epochs at base lr 5e-4 (batch 1024),
layer decay 0.65 for 12 blocks, with RandAugment, mixup, cutmix and random erasing. Small encoders
(6-12 blocks) on 28-96 px images get layer decay 0.75 (a shallower stack needs less discount at the
stem), 50 epochs, batch 128, base lr 1e-3, and crop + flip only (the heavy regularisers need long
schedules to pay off). Drop-path 0.1, label smoothing 0.1, weight decay 0.05 and betas (0.9, 0.999)
are the papers' values. The regularisers are settings, off by default: `rand_augment` (a timm policy,
the papers' "rand-m9-mstd0.5-inc1", per image where the crop is cut: data/rand_augment.py),
`random_erasing` (0.25), `mixup` (0.8) and `cutmix` (1.0) (evaluation/regularizers.py); with the
papers' epochs, batch, lr and crop scale they give the papers' whole recipe. The reported number is
the test top-1 after the last epoch (never the best epoch: that would select on the test set).

Fine-tuning a large encoder takes hours, so it can resume: given a `Progress` (a file and a key), the
whole state (weights, optimizer, schedule, the batch order's and the augmentation's random generators)
is written there atomically after every epoch, and a later call with the same file and key continues
after the last finished epoch (on CPU with the result of an uninterrupted run, bit for bit). A file
with another key, or one that cannot be read, is not used. The caller removes the file once the
result is stored: a kill between the last epoch and that point costs only the test pass. Under SLURM,
the warning before its time limit (hybridssl/slurm.py) stops the fine-tune after the epoch it is in (every
process after the same one) and requeues the job, whose same command continues from there.

Splits too large for memory (data/training_set.py) stream, as in pretraining: DataLoader workers decode
each file at full resolution and cut its random-resized crop and flip there (data/streaming.py), and
the test split is read fitted to the encoder's size. Their order and crops come from (seed, epoch,
sample), so a resumed streamed fine-tune needs no saved state for them and sees the same batches.
Everything drawn in this process (device crops, per-image RandAugment seeds of stored splits, erasing,
mixing, drop-path) comes from torch's generators (CPU, and CUDA on a GPU), which the progress saves.

Under torchrun (torch.distributed initialized) the same function runs on every process with DDP: the
batch size is the global batch, each process trains on its slice of it and tests its share of the
test split, and process 0 writes the progress (see `finetune`).
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import (
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
)
from torch import Tensor, nn

from hybridssl.data.rand_augment import RandAugment, check_policy, mean_fill
from hybridssl.data.sources import DataInfo, ImageSet
from hybridssl.data.streaming import StreamingSet
from hybridssl.data.views import Crop, Views, identity, to_unit
from hybridssl.engine.optim import WarmupCosine
from hybridssl.errors import ConfigError, DataError
from hybridssl.evaluation.batches import epoch_batches, steps_per_epoch
from hybridssl.evaluation.regularizers import BatchRegularizers
from hybridssl.files import atomic_write
from hybridssl.nn.distributed import (
    every_process,
    rank,
    same_on_every_process,
    sum_over_processes,
    world_size,
)
from hybridssl.nn.param_groups import layer_decay, param_groups
from hybridssl.nn.vit import Pooling, ViT, pool, set_grad_checkpointing
from hybridssl.settings import StrictModel
from hybridssl.slurm import WARNING, requeue


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
    # recompute each block in the backward (ViT-L at 224 px on one GPU); the numbers do not change, so it
    # is left out of the records and of what decides whether a result is measured again
    grad_checkpointing: bool = Field(False, exclude=True)
    # the papers' regularisers (their values in comments), off by default; see the module docstring
    rand_augment: str | None = None  # a timm RandAugment policy: "rand-m9-mstd0.5-inc1"
    random_erasing: float = Field(0.0, ge=0, le=1)  # probability per image: 0.25
    mixup: NonNegativeFloat = 0.0  # Beta(alpha, alpha) of the mixing weight: 0.8
    cutmix: NonNegativeFloat = 0.0  # 1.0
    cutmix_share: float = Field(0.5, ge=0, le=1)  # with both on, the share of batches that get cutmix

    @field_validator("rand_augment")
    @classmethod
    def _known_policy(cls, policy: str | None) -> str | None:
        return None if policy is None else check_policy(policy)

    @model_serializer(mode="wrap")
    def _without_unused_regularisers(self, dump: SerializerFunctionWrapHandler) -> dict:
        """A regulariser at its default (off) is left out of every dump, so the records and keys of
        results measured before the regularisers existed stay valid."""
        return {k: v for k, v in dump(self).items() if k not in REGULARISERS or v != REGULARISERS[k]}

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def augmentation(self) -> str:
        """What the training images go through, in words (for the records)."""
        steps = ["random-resized crop (crop_scale) + horizontal flip"]
        steps += [f"RandAugment {self.rand_augment} (timm)"] if self.rand_augment else []
        steps += [f"random erasing p {self.random_erasing:g} (noise)"] if self.random_erasing else []
        mixers = [f"mixup alpha {self.mixup:g}"] * (self.mixup > 0) + [f"cutmix alpha {self.cutmix:g}"] * (self.cutmix > 0)
        steps += [" or ".join(mixers) + (f" (cutmix share {self.cutmix_share:g})" if len(mixers) == 2 else "")] if mixers else []
        return ", ".join(steps)


REGULARISERS = {name: FinetuneSettings.model_fields[name].default for name in ("rand_augment", "random_erasing", "mixup", "cutmix", "cutmix_share")}


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
    seconds: float  # over every session of a resumed fine-tune
    resumed_after_epoch: int = 0  # 0: not resumed
    classifier: Classifier | None = field(default=None, repr=False)  # the fine-tuned model, in eval mode


def with_drop_path(encoder: ViT, drop_path: float) -> ViT:
    """A copy of `encoder` with the same weights and the given drop-path rate (a ramp over the blocks)."""
    rebuilt = ViT(replace(encoder.cfg, drop_path=drop_path))
    rebuilt.load_state_dict(encoder.state_dict())
    return rebuilt


def test_batches(test: ImageSet | StreamingSet, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """uint8 images and labels of the test split (under several processes, this process's every
    world_size-th image); streamed files that cannot be read are left out (a warning names each)."""
    if world_size() > 1:
        test = test.select(torch.arange(rank(), len(test), world_size()))
    if isinstance(test, ImageSet):
        for i in range(0, len(test), batch_size):
            yield test.images[i : i + batch_size], test.labels[i : i + batch_size]  # type: ignore[index]
        return
    for batch in test.fitted(batch_size, "finetune test"):
        if len(batch["images"]):
            yield batch["images"], batch["labels"]


@torch.no_grad()
def classifier_accuracy(model: nn.Module, test: ImageSet | StreamingSet, info: DataInfo, batch_size: int, device: torch.device) -> float:
    normalize = identity(info).normalize
    model.eval()
    correct = seen = 0
    for images, labels in test_batches(test, batch_size):
        x = normalize(to_unit(images.to(device)))
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            correct += (model(x).argmax(dim=1).cpu() == labels).sum().item()
        seen += len(labels)
    counts = sum_over_processes(torch.tensor([correct, seen], dtype=torch.float64, device=device))  # each tested its share
    correct, seen = int(counts[0].item()), int(counts[1].item())
    if seen == 0:
        raise DataError("finetune: no readable image in the test split")
    return 100.0 * correct / seen


class StoredEpochs:
    """Training batches of images held on the device, cropped there; the order comes from a generator
    carried across epochs (saved with the progress). `batch_size` is the global batch: under several
    processes each takes its slice of it (the same order on every process)."""

    def __init__(self, train: ImageSet, augment: Views, batch_size: int, generator: torch.Generator, device: torch.device) -> None:
        self.images, self.labels = train.images.to(device), train.labels.to(device)  # type: ignore[union-attr]
        self.augment, self.batch_size, self.generator, self.device = augment, batch_size, generator, device

    def __len__(self) -> int:
        return steps_per_epoch(len(self.images), self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        for idx in epoch_batches(len(self.images), self.batch_size, self.generator):
            idx = idx.view(world_size(), -1)[rank()].to(self.device)
            (x,) = self.augment(self.images[idx])
            yield x, self.labels[idx]


class StreamedEpochs:
    """Training batches decoded and cropped by DataLoader workers from the full-resolution files, in the
    order and with the crops of (seed, epoch, sample): pretraining's streaming path (data/streaming.py).
    Under several processes each loads its slice of every global batch of `batch_size`: together the
    same images and crops as one process."""

    def __init__(self, train: StreamingSet, augment: Views, batch_size: int, seed: int, device: torch.device) -> None:
        per_process = batch_size // world_size()
        self.loader = train.loader(augment.crops, per_process, seed, rank(), world_size(), False, pin_memory=device.type == "cuda")
        self.augment, self.device = augment, device

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        self.loader.set_epoch(epoch)
        for batch in self.loader:
            (x,) = self.augment.finish([crop.to(self.device, non_blocking=True) for crop in batch["crops"]])
            yield x, batch["labels"].to(self.device, non_blocking=True)
            self.loader.advance()


@dataclass(frozen=True)
class Progress:
    """Where a resumable fine-tune keeps its state, and what must match for the state to be used."""

    path: Path
    key: str

    def load(self) -> dict | None:
        """The saved state, or None when there is none for this key (an unreadable file, e.g. of an older
        version, is reported and not used: the fine-tune starts over and overwrites it)."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a torn or foreign file: torch raises many types
            warnings.warn(f"finetune: ignoring unreadable progress file {self.path} ({exc})", stacklevel=3)
            return None
        return state if isinstance(state, dict) and state.get("key") == self.key else None

    def save(self, state: dict) -> None:
        atomic_write(self.path, lambda f: torch.save({**state, "key": self.key}, f), unique=True)


def finetune(
    encoder: ViT,
    train: ImageSet | StreamingSet,
    test: ImageSet | StreamingSet,
    info: DataInfo,
    num_classes: int,
    pooling: Pooling,
    settings: FinetuneSettings = FinetuneSettings(),
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> FinetuneResult:
    """Fine-tunes a copy of `encoder` on labelled uint8 images, in memory or streamed (the caller's
    encoder untouched), and tests it; resumable through `progress` (module docstring). Under several
    processes (torch.distributed initialized, e.g. by torchrun) the model is wrapped in DDP,
    `settings.batch_size` is the global batch, each process draws its own augmentations and
    drop-path, and process 0 alone writes the progress, which holds every process's generators."""
    start = time.perf_counter()
    device = torch.device(device)
    if settings.batch_size % world_size():
        raise ConfigError(f"finetune.batch_size: {settings.batch_size} does not split evenly over {world_size()} processes")
    torch.manual_seed(seed + rank())  # process 0 has a single process's seed
    generator = torch.Generator().manual_seed(seed)  # the batch order: the same on every process
    model = Classifier(with_drop_path(encoder, settings.drop_path), num_classes, pooling).to(device)
    set_grad_checkpointing(model, settings.grad_checkpointing)
    lr = settings.base_lr * settings.batch_size / 256
    groups = param_groups(model.named_parameters(), settings.weight_decay, layer_decay(encoder.cfg.depth, settings.layer_decay))
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    fused = device.type == "cuda" or None
    opt = torch.optim.AdamW(groups, lr=lr, betas=settings.betas, fused=fused)
    policy = RandAugment(settings.rand_augment, mean_fill(info.mean)) if settings.rand_augment else None
    augment = Views([Crop(info.image_size, tuple(settings.crop_scale), rand_augment=policy)], info)
    regularize = BatchRegularizers(settings.random_erasing, settings.mixup, settings.cutmix, settings.cutmix_share, num_classes)
    if isinstance(train, StreamingSet):
        batches: StoredEpochs | StreamedEpochs = StreamedEpochs(train, augment, settings.batch_size, seed, device)
    else:
        batches = StoredEpochs(train, augment, settings.batch_size, generator, device)
    total = settings.epochs * len(batches)
    warmup = int(settings.warmup_fraction * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(total, warmup, settings.min_lr_fraction))
    loss, first_epoch, earlier_seconds = torch.zeros(()), 0, 0.0
    saved = progress.load() if progress is not None else None
    if saved is not None and len(saved.get("processes", [saved])) != world_size():
        saved = None  # written by another number of processes: not this fine-tune's generators
    same_on_every_process(None if saved is None else saved["epochs_done"], "the fine-tune's finished epochs")
    if progress is not None and saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        generator.set_state(saved["generator"])
        own = saved["processes"][rank()] if world_size() > 1 else saved
        torch.set_rng_state(own["rng"])
        if device.type == "cuda" and "cuda_rng" in own:
            torch.cuda.set_rng_state(own["cuda_rng"], device)
        loss, first_epoch, earlier_seconds = saved["loss"], saved["epochs_done"], saved["seconds"]
        if rank() == 0:
            print(f"finetune: resuming after epoch {first_epoch} of {settings.epochs} ({progress.path})", file=sys.stderr, flush=True)
    trained = model if world_size() == 1 else nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    for epoch in range(first_epoch, settings.epochs):
        trained.train()
        for x, y in batches.epoch(epoch):
            x, y = regularize(x, y)
            with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
                logits = trained(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=settings.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            opt.step()
            scheduler.step()
        loss = sum_over_processes(loss.detach()) / world_size()
        if progress is not None:
            generators = {"rng": torch.get_rng_state(), **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {})}
            processes = every_process({k: v.cpu() for k, v in generators.items()})
            if rank() == 0:
                print(f"finetune: epoch {epoch + 1}/{settings.epochs}, train loss {loss.item():.4f}", file=sys.stderr, flush=True)
                progress.save({
                    "epochs_done": epoch + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": scheduler.state_dict(), "generator": generator.get_state(), **generators,
                    **({"processes": processes} if world_size() > 1 else {}),
                    "loss": loss.cpu(), "seconds": earlier_seconds + time.perf_counter() - start,
                })  # fmt: skip
        if progress is not None and epoch + 1 < settings.epochs and WARNING.listening:  # under SLURM (hybridssl/slurm.py)
            # every process stops after the same epoch, its state saved: the warning reaches them at different moments
            if sum_over_processes(torch.tensor(float(WARNING.received), device=device)).item() > 0:
                requeue(f"stopped before fine-tune epoch {epoch + 2} of {settings.epochs} (progress in {progress.path})", ask=rank() == 0)
    del batches, trained  # a streamed split's workers stop before the test pass starts its own
    top1 = classifier_accuracy(model, test, info, settings.eval_batch_size, device)
    seconds = earlier_seconds + time.perf_counter() - start
    return FinetuneResult(top1, float(loss.item()), total, lr, seconds, first_epoch, model.eval())
