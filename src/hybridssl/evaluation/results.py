"""Every evaluation result becomes one JSON line in `results.jsonl`, settings included."""

from __future__ import annotations

import json
import os
import platform
import time
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
    with open(path, "a") as f:
        f.write(json.dumps(full) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return full


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """The records of a results file, or of every results file under a folder; none if it does not exist."""
    path = Path(path)
    files = sorted(path.rglob(RESULTS)) if path.is_dir() else [path] if path.is_file() else []
    return [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]
