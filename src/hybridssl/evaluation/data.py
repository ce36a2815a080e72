"""The labelled splits an evaluation reads, in memory or streamed, and their frozen features.

Named datasets: their train and test splits. Folders: the train split is `--data-dir` (its `train/`
for a train/val root), the test split `--eval-data-dir`, or the root's `val/` (`validation/`, `test/`)
without further flags. Folders larger than the memory budget (data/training_set.py) stream: features
are computed batch by batch from images fitted to the encoder's size (shorter side resized, centre
crop), decoded by DataLoader workers, with a progress bar; the features, not the images, are kept.
A test split can be viewed like MAE's and timm's evaluations, the centre of a larger resize
(`test_crop_fraction`, timm's crop_pct: 0.875 is 256 -> 224); the train split always keeps the whole
shorter side, so fine-tuning crops and the probes' train features see whole images.
Fine-tuning streams them too (evaluation/finetune.py).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Union

import torch
from torch import Tensor

from hybridssl.data.decode import fit
from hybridssl.data.index import has_split_layout, labels_in
from hybridssl.data.sources import STREAMED, DataInfo, ImageSet, load_dataset, record_index
from hybridssl.data.streaming import StreamingSet
from hybridssl.data.training_set import LoaderChoice, stored_or_streamed
from hybridssl.errors import ConfigError, DataError
from hybridssl.embedding.features import encoder_features, pixel_features
from hybridssl.nn.vit import Pooling, ViT

EvalData = Union[ImageSet, StreamingSet]


def folder_split(data_dir: Path | None, eval_data_dir: Path | None, split: str) -> Path:
    """Where a folder dataset's `split` is read from (see the module docstring)."""
    if split == "train":
        if data_dir is None:
            raise DataError("dataset 'folder' needs --data-dir with the labelled train images")
        return data_dir
    if eval_data_dir is not None:
        return eval_data_dir
    if data_dir is not None and has_split_layout(Path(data_dir)):
        return data_dir
    raise DataError("dataset 'folder' needs --eval-data-dir with the labelled test images (or a --data-dir "
                    "holding train/ and val/)")  # fmt: skip


def eval_split(dataset: str, split: str, data_dir: Path | None, eval_data_dir: Path | None, info: DataInfo, *,
               limit: int | None = None, seed: int = 0, loader: LoaderChoice = "auto", num_workers: int | None = None,
               download: bool = False, crop_fraction: float = 1.0) -> EvalData:  # fmt: skip
    """One labelled split at the encoder's size, limited to a seeded subset before decoding, fitted to
    the centre `crop_fraction` of its shorter side (decode.fit)."""
    if dataset not in STREAMED:
        if loader == "stream":
            raise ConfigError(f"loader: {dataset} is loaded into memory; `stream` applies to folder and shards datasets")
        root = data_dir if split == "train" else (eval_data_dir or data_dir)
        data: EvalData = load_dataset(dataset, split, root, download=download).take(limit, seed)
    else:
        if dataset == "folder":
            source = folder_split(data_dir, eval_data_dir, split)
        else:  # a pack holds both splits; --eval-data-dir: another pack's test split
            source = data_dir if split == "train" else (eval_data_dir or data_dir)
        index = record_index(dataset, source, split).take(limit, seed)
        data = stored_or_streamed(dataset, index, info.image_size, info.channels, loader=loader, num_workers=num_workers,
                                  crop_fraction=crop_fraction)  # fmt: skip
    if data.labels is None or (data.labels < 0).all():
        where = f" ({source})" if dataset in STREAMED else ""
        flag = "--eval-data-dir" if split == "test" else "--data-dir"
        fix = (f": put its images in class subfolders, or give {flag} a file list with a `path,label` line "
               "per image (ImageNet's flat val/ needs one)") if dataset == "folder" else ""
        raise DataError(f"the {split} split of {dataset}{where} has no labels; evaluation needs labelled images{fix}")
    if isinstance(data, ImageSet):
        shape = tuple(data.images.shape[1:])
        if shape != (info.channels, info.image_size, info.image_size):
            hint = f"; evaluate with --image-size {shape[1]}" if shape[0] == info.channels and shape[1] == shape[2] else ""
            raise DataError(f"{dataset} images are {shape}, the encoder expects {(info.channels, info.image_size, info.image_size)}{hint}")
    return centre_crop(data, crop_fraction) if dataset not in STREAMED else data


def centre_crop(data: EvalData, crop_fraction: float) -> EvalData:
    """`data` viewed as the centre `crop_fraction` of its images (decode.fit): stored images are resized
    from what is stored (a named dataset's own pixels; a held-out share of a decoded folder's train
    split, already at the encoder's size), streamed ones from their files."""
    if crop_fraction == 1.0 or len(data) == 0:
        return data
    if isinstance(data, StreamingSet):
        return replace(data, crop_fraction=crop_fraction)
    size = data.images.shape[-1]
    return replace(data, images=torch.cat([fit(chunk, size, crop_fraction) for chunk in data.images.split(1024)]))


@torch.inference_mode()
def features_and_labels(encoder: ViT | None, data: EvalData, info: DataInfo, pooling: Pooling | str, device: torch.device,
                        batch_size: int = 256, progress: str | None = None) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """N x D frozen features (eval mode, full view), their labels and their rows in `data`; `encoder`
    None: raw pixels. Streamed files that cannot be read are left out with their labels and rows, with a
    warning naming each (the rows map a choice among the features back to the files)."""
    def encode(images: Tensor) -> Tensor:
        if encoder is None:
            return pixel_features(images, info)
        return encoder_features(encoder, images, info, pooling, batch_size, device)  # type: ignore[arg-type]

    if isinstance(data, ImageSet):
        return encode(data.images), data.labels, torch.arange(len(data))  # type: ignore[return-value]
    feats, labels, rows = [], [], []
    for batch in data.fitted(batch_size, progress):
        if len(batch["images"]):
            feats.append(encode(batch["images"]))
            labels.append(batch["labels"])
            rows.append(batch["ids"])
    if not feats:
        raise DataError(f"no readable images in {data.index.root}")
    return torch.cat(feats), torch.cat(labels), torch.cat(rows)


def with_classes_of(train: EvalData, test: EvalData) -> EvalData:
    """`test` with its labels numbered by the train split's class names (see data/index.labels_in)."""
    if test.classes is None or train.classes is None or test.classes == train.classes:
        return test
    if isinstance(test, ImageSet):
        labels = labels_in(test.labels.numpy(), test.classes, train.classes, "the test split")
        return ImageSet(test.images, torch.from_numpy(labels), train.classes, test.skipped)
    index = test.index
    relabelled = replace(index, labels=labels_in(index.labels, index.classes, train.classes, "the test split"), classes=train.classes)
    return replace(test, index=relabelled)


def decoded_when_small(data: EvalData, batch_size: int) -> EvalData:
    """A streamed fine-tuning set smaller than one batch (a few images per class of low-shot) is decoded:
    the in-memory loop repeats such a set within the batch, the streaming loader cannot. Larger ones
    stream, so every fine-tune of a streamed split crops the same way (from the full-resolution files)."""
    if isinstance(data, StreamingSet) and len(data) < batch_size:
        return data.materialize()
    return data
