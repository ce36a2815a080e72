"""The run's CSV metrics across resumes.

Lightning's CSV logger deletes an existing `metrics.csv` when it starts, so a resumed run would lose
the metrics of every earlier part. Before a resume the file is moved to `metrics.partN.csv`;
`read_metrics` merges all parts, the newest part winning for a step logged twice (the steps between a
run's last checkpoint and its death are trained and logged again after the resume).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

CSV_DIR = Path("logs") / "csv"
METRICS = "metrics.csv"


def part_files(folder: Path) -> list[Path]:
    """metrics.part1.csv, metrics.part2.csv, ... in order."""
    parts = [(int(m.group(1)), p) for p in folder.glob("metrics.part*.csv") if (m := re.fullmatch(r"metrics\.part(\d+)\.csv", p.name))]
    return [p for _, p in sorted(parts)]


def preserve_metrics(output: Path) -> Path | None:
    """Moves OUTPUT/logs/csv/metrics.csv to the next free metrics.partN.csv; returns the new path."""
    folder = Path(output) / CSV_DIR
    current = folder / METRICS
    if not current.is_file():
        return None
    parts = part_files(folder)
    last = int(re.search(r"part(\d+)", parts[-1].name).group(1)) if parts else 0
    target = folder / f"metrics.part{last + 1}.csv"
    current.replace(target)
    return target


def read_metrics(output: Path) -> list[dict[str, float]]:
    """Every logged row of a run (all parts), one merged row per step, sorted by step.

    Values are floats; a column a row did not log is absent from it."""
    folder = Path(output) / CSV_DIR
    files = [*part_files(folder), *([folder / METRICS] if (folder / METRICS).is_file() else [])]
    by_step: dict[int, dict[str, float]] = {}
    for path in files:
        seen_here: set[int] = set()
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                step = int(float(row["step"]))
                values = {k: float(v) for k, v in row.items() if v not in ("", None) and k != "step"}
                if step not in seen_here:  # a later part replaces what an earlier one logged at this step
                    by_step[step] = {}
                    seen_here.add(step)
                by_step[step].update(values)
    return [{"step": float(step), **by_step[step]} for step in sorted(by_step)]
