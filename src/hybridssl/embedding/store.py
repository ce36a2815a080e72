"""Embeddings on disk: one NumPy `.npz` file that any tool reads (`numpy.load`, no pickles).

Arrays: `embeddings` (N x D float32), `paths` (each row's file, or `dataset:split:index`), `labels`
(int64, -1 without a class), `classes` (the class names, possibly empty) and `meta`, a JSON string
with the checkpoint, method, pooling, image size, channels, mean/std, data source, unreadable files
skipped, the library's version and the time.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from hybridssl.embedding.encoder import Embeddings
from hybridssl.errors import DataError
from hybridssl.files import atomic_write_bytes
from hybridssl.version import __version__

SUFFIX = ".npz"


def embeddings_path(output: str | Path) -> Path:
    """`output` with the `.npz` suffix it is written under."""
    output = Path(output)
    return output if output.suffix == SUFFIX else output.with_name(output.name + SUFFIX)


def save_embeddings(output: str | Path, emb: Embeddings, source: dict[str, Any] | None = None) -> Path:
    """Writes `emb` atomically; returns the path written (`output`, with `.npz` added when missing)."""
    path = embeddings_path(output)
    meta = {**emb.meta, "source": source or {}, "rows": len(emb.paths), "skipped": emb.skipped,
            "hybridssl": __version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
    buffer = io.BytesIO()
    np.savez(buffer, embeddings=emb.vectors.astype(np.float32), paths=np.array(emb.paths, dtype=str),
             labels=emb.labels.astype(np.int64), classes=np.array(emb.classes or [], dtype=str), meta=np.array(json.dumps(meta)))  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_embeddings(path: str | Path) -> Embeddings:
    """An embeddings file written by `save_embeddings` (`hybridssl embed`)."""
    path = Path(path)
    if not path.is_file() and embeddings_path(path).is_file():
        path = embeddings_path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            classes = [str(c) for c in f["classes"]]
            return Embeddings(f["embeddings"], [str(p) for p in f["paths"]], f["labels"], classes or None,
                              list(meta.get("skipped", [])), meta)  # fmt: skip
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path} is not an embeddings file of `hybridssl embed` ({type(exc).__name__}: {str(exc)[:120]})") from None
