"""What `Encoder.embed` accepts, as one kind of sample index: a folder in any layout the CLI reads (class
sub-folders, a flat folder, a train/ + val/ root), a .csv/.txt file list, one image file, or a list
of image paths; or a uint8 tensor already at the encoder's input size."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
from torch import Tensor

from hybridssl.data.decode import IMAGE_SUFFIXES
from hybridssl.data.index import FileIndex, file_index, source_for
from hybridssl.errors import DataError

PathLike = Union[str, os.PathLike]
Images = Union[PathLike, Sequence[PathLike], Tensor]


def path_list(paths: Sequence[PathLike]) -> FileIndex:
    """A list of image paths (relative ones to the working folder), unlabelled, in the order given."""
    if not paths:
        raise DataError("images: the list of paths is empty")
    encoded = np.array([os.fsencode(os.path.abspath(p)) for p in paths])
    return FileIndex(Path("/"), encoded, np.full(len(paths), -1, dtype=np.int64), None)


def index_of(images: PathLike | Sequence[PathLike], split: str = "train") -> FileIndex:
    """The files `images` names; for a train/ + val/ root, `split` picks the folder ("train": train/,
    "test": val/)."""
    if isinstance(images, (str, os.PathLike)):
        path = Path(images)
        if not path.exists():
            raise DataError(f"images: {path} does not exist")
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            return path_list([path])
        return file_index(source_for(path, split) if path.is_dir() else path)
    return path_list(list(images))
