"""What `hybridssl embed` embeds, named as the other commands name data: a folder (any layout), a file
list, packed shards, or a split of a named dataset (fashion-mnist, cifar10, ...), with a record of
where it came from for the embeddings file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from hybridssl.data.decode import fit
from hybridssl.data.sources import STREAMED, load_dataset, record_index
from hybridssl.embedding.encoder import Embeddings, Encoder
from hybridssl.embedding.images import index_of
from hybridssl.errors import DataError


def embed_source(encoder: Encoder, dataset: str | None, data_dir: Path | str | None, split: str = "train",
                 limit: int | None = None, seed: int = 0, batch_size: int = 256, num_workers: int | None = None,
                 strict: bool = False, progress: bool = True) -> tuple[Embeddings, dict[str, Any]]:  # fmt: skip
    """(embeddings, source record). `dataset` None or "folder": `data_dir` is a folder, train/ + val/
    root ("test" split: val/), .csv/.txt file list or image; "shards": a `hybridssl pack` output;
    any other name: that dataset's split, read as `evaluate` reads it. `limit`: a seeded subset."""
    source = {"dataset": dataset or "folder", "data_dir": None if data_dir is None else str(data_dir), "split": split,
              "limit": limit, "seed": seed}  # fmt: skip
    if dataset in (None, "folder", *STREAMED):
        if data_dir is None:
            raise DataError("data_dir: give the folder, file list or image to embed (--data-dir)")
        index = index_of(data_dir, split) if dataset in (None, "folder") else record_index(dataset, data_dir, split)
        emb = encoder.embed_index(index.take(limit, seed), batch_size, progress, num_workers, strict)
    else:
        emb = stored_embeddings(encoder, dataset, data_dir, split, limit, seed, batch_size)
    emb.meta = {**emb.meta, "source": source}  # where the rows came from: the neighbour page reads thumbnails by it
    return emb, source


def stored_embeddings(encoder: Encoder, dataset: str, data_dir: Path | str | None, split: str, limit: int | None,
                      seed: int, batch_size: int) -> Embeddings:  # fmt: skip
    """A named dataset's split, fitted to the encoder's size (grey images repeated for a 3-channel encoder)."""
    full = load_dataset(dataset, split, data_dir)
    rows = kept_rows(len(full), limit, seed)
    data = full.select(torch.as_tensor(rows))
    vectors = []
    for start in range(0, len(data), batch_size):
        images = data.images[start : start + batch_size]
        if images.shape[1] != encoder.channels:
            if images.shape[1] != 1:
                raise DataError(f"{dataset} images have {images.shape[1]} channels, the encoder takes {encoder.channels}")
            images = images.expand(-1, encoder.channels, -1, -1)
        if images.shape[-1] != encoder.image_size or images.shape[-2] != encoder.image_size:
            images = fit(images, encoder.image_size)
        vectors.append(encoder.features(images.contiguous()).numpy())
    labels = data.labels.numpy() if data.labels is not None else np.full(len(data), -1, dtype=np.int64)
    return Embeddings(np.concatenate(vectors), [f"{dataset}:{split}:{i}" for i in rows], labels, data.classes,
                      meta=encoder.description())  # fmt: skip


def kept_rows(n: int, limit: int | None, seed: int) -> list[int]:
    """The rows a seeded subset keeps, as `take(limit, seed)` draws them (recorded for thumbnails)."""
    if limit is None or limit >= n:
        return list(range(n))
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values.tolist()
