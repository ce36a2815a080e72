"""`load_encoder(path) -> Encoder`: any file hybridssl reads, ready to turn images into embeddings
with the input size, normalization and pooling it was trained and evaluated with.

Files are decoded by DataLoader workers in index order (shorter side resized, centre square: the
evaluation view, data/decode.fit) and embedded batch by batch, so a folder of any size takes memory
for one batch and the embeddings only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hybridssl.data.index import FileIndex
from hybridssl.data.shards import ShardIndex
from hybridssl.data.sources import DataInfo
from hybridssl.data.streaming import default_workers, fitted_batches
from hybridssl.embedding.features import encoder_features
from hybridssl.embedding.images import Images, index_of
from hybridssl.errors import DataError
from hybridssl.nn.vit import Pooling, ViT
from hybridssl.weights.loading import load_trained_encoder


@dataclass
class Embeddings:
    """Embeddings of the readable images of a source, row by row with where each came from."""

    vectors: np.ndarray  # float32, N x D
    paths: list[str]  # each row's file (or `dataset:split:index` for a named dataset)
    labels: np.ndarray  # int64, -1 where the layout has no class
    classes: list[str] | None = None
    skipped: list[str] = field(default_factory=list)  # unreadable files, with the reason
    meta: dict[str, Any] = field(default_factory=dict)  # how they were computed (Encoder.description)


@dataclass
class Encoder:
    """A trained ViT and how to feed it: input size, channels, mean/std and the pooling its method was
    evaluated with. `embed` turns images into an N x D float32 array."""

    module: ViT
    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pooling: Pooling
    source: str = ""  # the file it was loaded from
    method: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def dim(self) -> int:
        return self.module.embed_dim

    @property
    def info(self) -> DataInfo:
        return DataInfo("embed", self.image_size, self.channels, self.mean, self.std)

    def description(self) -> dict[str, Any]:
        """What decides the embeddings besides the images: recorded beside them."""
        return {"checkpoint": self.source, "method": self.method, "pooling": self.pooling, "image_size": self.image_size,
                "channels": self.channels, "mean": list(self.mean), "std": list(self.std), "dim": self.dim,
                "view": "shorter side resized (bicubic), centre square"}  # fmt: skip

    @torch.inference_mode()
    def features(self, images: Tensor) -> Tensor:
        """One batch: uint8 N x C x H x W at the input size -> N x D float32 (CPU)."""
        expected = (self.channels, self.image_size, self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise DataError(f"images: a tensor of {tuple(images.shape)}; the encoder takes N x {' x '.join(map(str, expected))} "
                            "uint8 images (pass file paths or a folder to have them resized)")  # fmt: skip
        if images.dtype != torch.uint8:
            raise DataError(f"images: a {images.dtype} tensor; the encoder takes uint8 images in [0, 255]")
        return encoder_features(self.module, images, self.info, self.pooling, len(images) or 1, self.device)

    def embed(self, images: Images, batch_size: int = 256, progress: bool = False, num_workers: int | None = None,
              strict: bool = False) -> np.ndarray:  # fmt: skip
        """N x D float32 embeddings of `images`: a folder (any layout the CLI reads), a file list, an image
        path or a list of paths (decoded, resized, centre-cropped), or a uint8 N x C x H x W tensor at the
        input size (only normalised). Unreadable files are left out with a warning naming each (`strict`:
        an error instead); `embeddings` says which row is which file."""
        if isinstance(images, Tensor):
            return np.concatenate([self.features(images[i : i + batch_size]).numpy() for i in range(0, len(images), batch_size)]
                                  or [np.zeros((0, self.dim), np.float32)])  # fmt: skip
        return self.embeddings(images, batch_size, progress, num_workers, strict).vectors

    def embeddings(self, images: Images, batch_size: int = 256, progress: bool = False, num_workers: int | None = None,
                   strict: bool = False, split: str = "train") -> Embeddings:  # fmt: skip
        """`embed`, with each row's path and label (for a train/ + val/ root: `split` "train" or "test")."""
        if isinstance(images, Tensor):
            vectors = self.embed(images, batch_size)
            return Embeddings(vectors, [f"tensor:{i}" for i in range(len(vectors))], np.full(len(vectors), -1), meta=self.description())
        return self.embed_index(index_of(images, split), batch_size, progress, num_workers, strict)

    def embed_index(self, index: FileIndex | ShardIndex, batch_size: int = 256, progress: bool = False,
                    num_workers: int | None = None, strict: bool = False) -> Embeddings:  # fmt: skip
        """Embeddings of the samples of a file or shard index, decoded by workers batch by batch."""
        workers = default_workers() if num_workers is None else num_workers
        vectors, rows, labels, skipped = [], [], [], []
        for batch in fitted_batches(index, self.image_size, self.channels, batch_size, workers, strict,
                                    "embedding" if progress else None):  # fmt: skip
            skipped += batch["skipped"]
            if len(batch["images"]):
                vectors.append(self.features(batch["images"]).numpy())
                rows.append(batch["ids"].numpy())
                labels.append(batch["labels"].numpy())
        if not vectors:
            raise DataError(f"no readable images in {index.root if len(index) > 1 else index.describe(0)}")
        ids = np.concatenate(rows)
        return Embeddings(np.concatenate(vectors), [index.describe(int(i)) for i in ids], np.concatenate(labels),
                          index.classes, skipped, self.description())  # fmt: skip


def default_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def load_encoder(path: str | os.PathLike, image_size: int | None = None, device: str | torch.device | None = None,
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                 pooling: Pooling | None = None, ema: bool = False) -> Encoder:  # fmt: skip
    """The encoder of any file hybridssl reads: our checkpoints (any stage, released or resumable), our
    exports, and official MAE, timm and mmpretrain files; at `image_size` (default: the size it was
    trained at; position embeddings resampled otherwise), on `device` (default: CUDA when present).
    `mean`/`std`/`pooling` replace what the file records (a released file without a record gets its
    format's default normalization, said in the line it prints). `ema`: the EMA of the encoder that a
    checkpoint kept (mim-refiner; mae-ct with `encoder_ema`) instead of the encoder."""
    trained = load_trained_encoder(Path(path), image_size, mean, std, pooling, ema)
    where = torch.device(device) if device is not None else default_device()
    info = trained.info
    return Encoder(trained.encoder.to(where).eval(), info.image_size, info.channels, tuple(info.mean), tuple(info.std),
                   trained.pooling, str(path), trained.config.get("method"), where)  # fmt: skip
