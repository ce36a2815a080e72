"""Image files streamed through DataLoader worker processes, for data that does not fit in memory.

Workers decode each file at full resolution (data/decode.read_image) and cut the method's crops from
it (RandomResizedCrop + flip, data/views.Crop), so crops see the whole photo, as in the official MAE
pipeline; the device then runs the rest of each view, batched (views.finish). Memory holds the file
index, the workers' prefetched batches and nothing that grows with the number of files.

Exact resume with workers: the sample order comes from (seed, epoch) (loader.EpochBatches, the same
rule as in memory), each sample's crop and flip draws from (seed, epoch, sample index) inside the
worker, whichever worker decodes it, and the engine counts processed batches, not fetched ones. A run
killed mid-epoch and resumed sees the same samples and the same crops. Each rank loads only its own
part of the global batch (or the whole global batch in the identical-views mode).

A file that cannot be decoded (empty, truncated, not an image, over the pixel limit of data/decode.py)
is replaced by the next readable file of the index, its path is logged, and the epoch's count of
skipped files is reported at its end; the replacement is deterministic, so a resumed run skips the
same way. `strict` makes it an error. A DataError from a read is about the dataset, not one file (a
damaged shard chunk, an invalid decode setting): it stops the run at once with its one line.
"""

from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from hybridssl.data.decode import fit
from hybridssl.data.index import FileIndex
from hybridssl.data.shards import ShardIndex
from hybridssl.data.loader import EpochBatches
from hybridssl.data.sources import DataInfo, ImageSet
from hybridssl.data.views import Crop
from hybridssl.errors import DataError

MAX_SUBSTITUTES = 64  # consecutive unreadable files before a run stops
STATS_SAMPLES = 512  # images whose pixels give a folder's mean and std


def default_workers(ranks_per_node: int = 1) -> int:
    """min(8, CPUs - 1) decoding processes, the node's CPUs shared by its ranks, and never more than the
    CPUs this process may run on: under SLURM's per-task binding those are already the task's own (so
    they are not divided again), and a task of 4 CPUs on a 96-CPU node gets 3 workers, not 8."""
    node = ((os.cpu_count() or 1) - 1) // max(1, ranks_per_node)
    return max(1, min(8, node, usable_cpus() - 1))


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, e.g. a SLURM task's; all of them elsewhere)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's crop draws: a function of (run seed, epoch, sample) only."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0] >> 1)


def cut_crops(image: Tensor, crops: Sequence[Crop], seed: int) -> list[Tensor]:
    """Random-resized crops (bicubic, antialiased) + flips (+ RandAugment where a crop asks) of one uint8
    image, drawn from `seed` with torchvision's own parameter sampling (on a forked generator, so no
    process-wide state moves)."""
    from torchvision.transforms import RandomResizedCrop
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    out = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for crop in crops:
            top, left, height, width = RandomResizedCrop.get_params(image, list(crop.scale), list(crop.ratio))
            cut = F.resized_crop(image, top, left, height, width, [crop.size, crop.size],
                                 interpolation=InterpolationMode.BICUBIC, antialias=True)  # fmt: skip
            cut = F.horizontal_flip(cut) if torch.rand(()) < 0.5 else cut
            out.append(crop.rand_augment(cut, int(torch.randint(2**31, ()))) if crop.rand_augment else cut)
    return out


def describe_failure(path: str, exc: Exception) -> str:
    """One line: the file, the error's type and the first line of its message."""
    return f"{path}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'unreadable'}"


class CropDataset(Dataset):
    """Map-style: key (epoch, index) -> the sample's crops, its id and label, and what was skipped."""

    def __init__(self, index: FileIndex | ShardIndex, crops: Sequence[Crop], channels: int, seed: int, strict: bool = False) -> None:
        self.index, self.crops, self.channels, self.seed, self.strict = index, list(crops), channels, seed, strict

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, first = key
        skipped = []
        for attempt in range(MAX_SUBSTITUTES):
            i = (first + attempt) % len(self.index)
            path = self.index.describe(i)
            try:
                image = self.index.read(i, self.channels)
            except DataError as exc:  # the dataset's fault, not this file's: skipping would only repeat it
                return {"error": str(exc)}
            except Exception as exc:  # decoders raise many types for broken files
                skipped.append(describe_failure(path, exc))
                if self.strict:  # raised by the main process (from a worker it would carry a traceback)
                    return {"error": f"unreadable image {skipped[-1]} (--strict)"}
                continue
            crops = cut_crops(image, self.crops, sample_seed(self.seed, epoch, i))
            return {"crops": crops, "id": i, "label": int(self.index.labels[i]), "skipped": skipped}
        return {"error": f"{MAX_SUBSTITUTES} unreadable images in a row from {self.index.describe(first)}; is this an image folder?"}


def collate_crops(samples: list[dict[str, Any]]) -> dict[str, Any]:
    if any("error" in s for s in samples):
        return {"errors": [s["error"] for s in samples if "error" in s]}
    return {
        "crops": [torch.stack([s["crops"][k] for s in samples]) for k in range(len(samples[0]["crops"]))],
        "ids": torch.tensor([s["id"] for s in samples], dtype=torch.int64),
        "labels": torch.tensor([s["label"] for s in samples], dtype=torch.int64),
        "skipped": [message for s in samples for message in s["skipped"]],
    }


class _Keys:
    """The DataLoader's batch sampler: (epoch, index) keys of the loader's remaining batches."""

    def __init__(self, position: EpochBatches) -> None:
        # weak: the loader owns the DataLoader that owns this sampler; no cycle, so dropping the loader
        # stops its persistent workers at once instead of at the next garbage collection
        self.position = weakref.proxy(position)

    def __len__(self) -> int:
        return len(self.position) - self.position.consumed

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.position.epoch
        for _, shown in self.position.remaining():
            yield [(epoch, int(i)) for i in shown]


class StreamingLoader(EpochBatches):
    """Batches of crops decoded by worker processes; the same position and state as InMemoryLoader."""

    def __init__(self, dataset: CropDataset, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 global_images: bool = False, num_workers: int = 0, pin_memory: bool = False, prefetch: int = 4) -> None:  # fmt: skip
        super().__init__(len(dataset), batch_size, seed, rank, world_size, global_images)
        self.dataset = dataset
        workers = {"persistent_workers": True, "prefetch_factor": prefetch} if num_workers > 0 else {}
        # its own generator: each new iterator draws the workers' base seed (unused: crops are seeded per
        # sample), which would otherwise move the global RNG once more in a resumed run than in a whole one
        self.dataloader = DataLoader(dataset, batch_sampler=_Keys(self), num_workers=num_workers, collate_fn=collate_crops,
                                     pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed), **workers)  # fmt: skip
        self.skipped_in_epoch: dict[int, int] = {}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.start_iteration()
        epoch, offset = self.epoch, self.offset
        for batch in self.dataloader:
            if "errors" in batch:
                raise DataError(batch["errors"][0])
            skipped = batch.pop("skipped")
            for message in skipped:
                warnings.warn(f"skipping unreadable image {message}", stacklevel=2)
            self.skipped_in_epoch[epoch] = self.skipped_in_epoch.get(epoch, 0) + len(skipped)
            if self.global_images:  # this rank's ids and labels; the crops stay global (identical-views mode)
                batch["ids"] = batch["ids"][offset : offset + self.batch_size]
                batch["labels"] = batch["labels"][offset : offset + self.batch_size]
            batch["offset"] = offset
            yield batch
        if self.skipped_in_epoch.get(epoch):
            warnings.warn(f"epoch {epoch}: skipped {self.skipped_in_epoch[epoch]} unreadable image(s)", stacklevel=2)


# ----------------------------------------------------------------------------- whole images


class FitDataset(Dataset):
    """index -> the image fitted to size x size (evaluation's view, statistics); None when unreadable."""

    def __init__(self, index: FileIndex | ShardIndex, size: int, channels: int, strict: bool = False,
                 crop_fraction: float = 1.0) -> None:  # fmt: skip
        self.index, self.size, self.channels, self.strict, self.crop_fraction = index, size, channels, strict, crop_fraction

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any] | str:
        path = self.index.describe(i)
        try:
            return {"image": fit(self.index.read(i, self.channels), self.size, self.crop_fraction), "label": int(self.index.labels[i]), "id": i}
        except DataError as exc:  # the dataset's fault, not this file's (CropDataset)
            return {"error": str(exc)}
        except Exception as exc:  # decoders raise many types for broken files
            if self.strict:  # raised by the main process (from a worker it would carry a traceback)
                return {"error": f"unreadable image {describe_failure(path, exc)} (--strict)"}
            return describe_failure(path, exc)


def collate_fitted(samples: list[dict[str, Any] | str]) -> dict[str, Any]:
    errors = [s["error"] for s in samples if isinstance(s, dict) and "error" in s]
    if errors:
        return {"errors": errors}
    good = [s for s in samples if not isinstance(s, str)]
    images = torch.stack([s["image"] for s in good]) if good else torch.zeros(0, dtype=torch.uint8)
    return {"images": images, "labels": torch.tensor([s["label"] for s in good], dtype=torch.int64),
            "ids": torch.tensor([s["id"] for s in good], dtype=torch.int64), "skipped": [s for s in samples if isinstance(s, str)]}  # fmt: skip


def fitted_batches(index: FileIndex | ShardIndex, size: int, channels: int, batch_size: int = 256, num_workers: int = 0,
                   strict: bool = False, progress: str | None = None, crop_fraction: float = 1.0) -> Iterator[dict[str, Any]]:  # fmt: skip
    """Images in the view of decode.fit (the whole shorter side unless crop_fraction < 1), batch by batch,
    in index order, decoded by workers; unreadable files are left out with a warning naming each.
    `progress`: a tqdm bar with this description."""
    loader = DataLoader(FitDataset(index, size, channels, strict, crop_fraction), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=collate_fitted, prefetch_factor=4 if num_workers else None)  # fmt: skip
    batches = loader
    if progress is not None:
        from tqdm.auto import tqdm

        batches = tqdm(loader, desc=progress, unit="batch", leave=False)
    for batch in batches:
        if "errors" in batch:
            raise DataError(batch["errors"][0])
        for message in batch["skipped"]:  # kept in the batch: embeddings record them
            warnings.warn(f"skipping unreadable image {message}", stacklevel=2)
        yield batch


def no_readable_images(root: object, tried: int, skipped: list[str]) -> str:
    """The one line for a dataset none of whose tried files decodes (a file list of missing paths)."""
    first = f"; first: {skipped[0]}" if skipped else ""
    return f"no readable images in {root}: all {tried} tried were unreadable{first}"


@dataclass
class StreamingSet:
    """A dataset of files read during training: its index and how to decode it. Stands where an
    ImageSet stands on the in-memory path (length, labels, classes, `take`)."""

    name: str
    index: FileIndex | ShardIndex
    image_size: int
    channels: int
    strict: bool = False
    num_workers: int = field(default_factory=default_workers)
    crop_fraction: float = 1.0  # the view of fitted images: decode.fit (a test split's centre crop)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def labels(self) -> Tensor | None:
        return torch.from_numpy(self.index.labels) if self.index.labelled else None

    @property
    def classes(self) -> list[str] | None:
        return self.index.classes

    @property
    def num_classes(self) -> int | None:
        return self.index.num_classes

    def take(self, limit: int | None, seed: int = 0) -> "StreamingSet":
        return self._with(self.index.take(limit, seed))

    def select(self, rows: Tensor) -> "StreamingSet":
        return self._with(self.index.select(rows.numpy()))

    def _with(self, index: FileIndex | ShardIndex) -> "StreamingSet":
        return replace(self, index=index)

    def fitted(self, batch_size: int = 256, progress: str | None = None) -> Iterator[dict[str, Any]]:
        """Its images in index order at image_size, in its view (fitted_batches)."""
        return fitted_batches(self.index, self.image_size, self.channels, batch_size, self.num_workers, self.strict, progress,
                              self.crop_fraction)  # fmt: skip

    def materialize(self, limit: int | None = None, seed: int = 0, progress: str | None = None) -> ImageSet:
        """A seeded subset decoded into memory at image_size (the k-NN monitor's bank, pictures); like
        every reader of a strict set, it stops at an unreadable file rather than leave it out."""
        images, labels, skipped = [], [], []
        for batch in self.take(limit, seed).fitted(progress=progress):
            skipped += batch["skipped"]
            if len(batch["ids"]):  # a batch of unreadable files only has no image shape
                images.append(batch["images"])
                labels.append(batch["labels"])
        if not images:
            raise DataError(no_readable_images(self.index.root, len(skipped), skipped))
        label_tensor = torch.cat(labels)
        return ImageSet(torch.cat(images), label_tensor if (label_tensor >= 0).any() else None, self.classes)

    @cached_property
    def info(self) -> DataInfo:
        """Mean and std per channel from a seeded sample of STATS_SAMPLES images (fitted to image_size)."""
        total = torch.zeros(self.channels, dtype=torch.float64)
        squares = torch.zeros(self.channels, dtype=torch.float64)
        pixels, skipped = 0, []
        sample = self.index.take(STATS_SAMPLES, seed=0)
        for batch in fitted_batches(sample, self.image_size, self.channels, num_workers=self.num_workers):
            skipped += batch["skipped"]
            if not len(batch["ids"]):  # every file of the batch unreadable: no image shape to sum over
                continue
            x = batch["images"].double().div_(255)
            total += x.sum(dim=(0, 2, 3))
            squares += x.pow(2).sum(dim=(0, 2, 3))
            pixels += x.shape[0] * x.shape[2] * x.shape[3]
        if pixels == 0:
            raise DataError(no_readable_images(self.index.root, len(sample), skipped))
        mean = total / pixels
        std = (squares / pixels - mean.pow(2)).clamp_min(1e-6).sqrt().clamp_min(1e-3)
        return DataInfo(self.name, self.image_size, self.channels, tuple(mean.tolist()), tuple(std.tolist()),
                        self.num_classes, len(self))  # fmt: skip

    def loader(self, crops: Sequence[Crop], batch_size: int, seed: int, rank: int, world_size: int,
               global_images: bool, pin_memory: bool) -> StreamingLoader:  # fmt: skip
        dataset = CropDataset(self.index, crops, self.channels, seed, self.strict)
        return StreamingLoader(dataset, batch_size, seed, rank, world_size, global_images, self.num_workers, pin_memory)
