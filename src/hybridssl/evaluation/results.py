"""Every evaluation result becomes one JSON line in `results.jsonl`, settings included."""

from __future__ import annotations

import json
import os
import platform
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hybridssl import __version__

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
