"""Every evaluation result becomes one JSON line in `results.jsonl`, settings included.

Every row says what it was measured under: `image_size` (the size the encoder ran at), `test_crop_fraction`
and `pooling`. Rows written before a key existed stay readable: `view_of` reads them (an absent crop
was the whole image; an absent size was not recorded).
"""

from __future__ import annotations

import json
import os
import platform
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from hybridssl.version import __version__

RESULTS = "results.jsonl"


def machine() -> str:
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{os.cpu_count()}"
    return f"{platform.node()} ({platform.machine()}, {device})"


def append_result(output_dir: str | Path, record: dict[str, Any]) -> dict[str, Any]:
    """Appends `record` (plus time, machine, version) to output_dir/results.jsonl and returns it."""
    full = {**record, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), "hybridssl": __version__}
    path = Path(output_dir) / RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        # a kill mid-write leaves a last line without its newline: start on a line of our own, so the
        # torn line stays one skipped line rather than swallowing this record too
        size = f.seek(0, os.SEEK_END)
        torn = False
        if size:
            f.seek(size - 1)
            torn = f.read(1) != b"\n"
        f.write((("\n" if torn else "") + json.dumps(full) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())
    return full


def result_rows(path: Path) -> Iterator[dict[str, Any]]:
    """The records of one results file in order; a line that does not parse (torn by a kill) is skipped
    with a warning naming it."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{number}: not a result (a torn line?); skipped", stacklevel=2)


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """The records of a results file, or of every results file under a folder; none if it does not exist."""
    path = Path(path)
    files = sorted(path.rglob(RESULTS)) if path.is_dir() else [path] if path.is_file() else []
    return [row for f in files for row in result_rows(f)]


class View(NamedTuple):
    """What a number was measured under, besides its settings: an accuracy at 112 px and one at 224 px
    are different measurements, and telling them apart needs the size beside the number."""

    image_size: int | None  # None: a row written before the size was recorded
    test_crop_fraction: float  # 1.0: the whole shorter side
    pooling: str | None

    @property
    def size_text(self) -> str:
        return f"{self.image_size} px" if self.image_size is not None else "size not recorded"

    @property
    def crop_text(self) -> str:
        return "whole" if self.test_crop_fraction == 1.0 else f"centre {self.test_crop_fraction:g}"

    def __str__(self) -> str:
        return self.size_text + ("" if self.test_crop_fraction == 1.0 else f", {self.crop_text}")


def view_of(row: Mapping[str, Any]) -> View:
    """The measurement conditions of one row; rows from before they were all recorded read as what they
    were (no `test_crop_fraction`: the whole image; no `image_size`: unknown)."""
    size = row.get("image_size")
    return View(int(size) if size is not None else None, float(row.get("test_crop_fraction", 1.0)), row.get("pooling"))


def sizes_text(rows: Iterable[Mapping[str, Any]]) -> str:
    """The image sizes of some rows, e.g. "112 px, 224 px" ("size not recorded" for older rows); "–" for none."""
    views = [view_of(r) for r in rows]
    known = sorted({v.image_size for v in views if v.image_size is not None})
    parts = [f"{s} px" for s in known] + (["size not recorded"] if any(v.image_size is None for v in views) else [])
    return ", ".join(parts) or "–"


def mixed_sizes_note(rows: Iterable[Mapping[str, Any]]) -> str | None:
    """A warning when the rows of one table were measured at more than one image size (None otherwise):
    a lower number at a smaller size says nothing about the encoder by itself."""
    rows = list(rows)
    known = {view_of(r).image_size for r in rows} - {None}
    if len(known) < 2:
        return None
    return (f"These results were measured at different image sizes ({sizes_text(rows)}): compare numbers only "
            "at the same size (the size of each is in its row).")
