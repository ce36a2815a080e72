"""The run's CSV metrics across resumes.

Lightning's CSV logger deletes an existing `metrics.csv` when it starts, so a resumed run would lose
the metrics of every earlier part. Before a resume the file is moved to `metrics.partN.csv`;
`report.curves.read_metrics` merges all parts, the newest winning for a step logged twice (the steps
between a run's last checkpoint and its death are trained and logged again after the resume).
"""

from __future__ import annotations

import re
from pathlib import Path

CSV_DIR = Path("logs") / "csv"
METRICS = "metrics.csv"


def part_number(path: Path) -> int:
    """N of metrics.partN.csv; 0 for any other name."""
    match = re.fullmatch(r"metrics\.part(\d+)\.csv", path.name)
    return int(match.group(1)) if match else 0


def part_files(folder: Path) -> list[Path]:
    """metrics.part1.csv, metrics.part2.csv, ... in order."""
    return sorted((p for p in folder.glob("metrics.part*.csv") if part_number(p)), key=part_number)


def preserve_metrics(output: Path) -> Path | None:
    """Moves OUTPUT/logs/csv/metrics.csv to the next free metrics.partN.csv; returns the new path."""
    folder = Path(output) / CSV_DIR
    current = folder / METRICS
    if not current.is_file():
        return None
    parts = part_files(folder)
    target = folder / f"metrics.part{part_number(parts[-1]) + 1 if parts else 1}.csv"
    current.replace(target)
    return target
