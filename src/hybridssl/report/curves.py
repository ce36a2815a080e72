"""Learning curves from a run's CSV logs (losses, learning rate, online monitors such as k-NN).

Lightning's CSVLogger appends to logs/csv/metrics.csv; a resumed run may replay steps, and older parts
of a log may have been renamed (metrics-*.csv). All parts are read oldest first (by modification
time), and for every metric the latest value logged at a step wins.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from matplotlib.figure import Figure

from hybridssl.engine.logs import part_number

Series = dict[str, list[tuple[int, float]]]
SKIP = frozenset({"step", "epoch"})


def metric_files(run_dir: Path) -> list[Path]:
    """Older parts first (by modification time, then part number: engine/logs.py), the current
    metrics.csv last (any earlier one was renamed to a part before a resume)."""
    files = list((Path(run_dir) / "logs" / "csv").glob("metrics*.csv"))
    return sorted(files, key=lambda p: (p.name == "metrics.csv", p.stat().st_mtime, part_number(p), p.name))


def read_metrics(run_dir: Path, skip: frozenset[str] | set[str] = SKIP) -> Series:
    """{metric: [(step, value), ...] sorted by step}, deduplicated by step keeping the latest value;
    the columns in `skip` are left out."""
    values: dict[str, dict[int, float]] = {}
    for path in metric_files(run_dir):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                try:
                    step = int(float(row.get("step") or ""))
                except ValueError:
                    continue
                for key, raw in row.items():
                    if key in skip or key is None or raw in (None, ""):
                        continue
                    try:
                        value = float(raw)
                    except ValueError:
                        continue
                    if math.isfinite(value):
                        values.setdefault(key, {})[step] = value
    return {key: sorted(steps.items()) for key, steps in sorted(values.items())}


def panels(series: Series) -> dict[str, Series]:
    """Learning rates of all parameter groups share one panel; every other metric has its own."""
    grouped: dict[str, Series] = {}
    for key, points in series.items():
        title = "learning rate" if key.startswith("lr-") else key
        grouped.setdefault(title, {})[key] = points
    order = sorted(grouped, key=lambda t: (t != "train/loss", t in ("img/s", "wait%"), t == "learning rate", t))
    return {t: grouped[t] for t in order}


def curves_png(series: Series, title: str = "", columns: int = 3) -> bytes | None:
    """A grid of small plots, one per panel; None when there is nothing to draw."""
    grid = panels(series)
    if not grid:
        return None
    rows = math.ceil(len(grid) / columns)
    cols = min(columns, len(grid))
    fig = Figure(figsize=(4.0 * cols, 2.7 * rows), dpi=100)
    for i, (name, lines) in enumerate(grid.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        for key, points in lines.items():
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="." if len(points) < 30 else None, linewidth=1.2,
                    label=key.removeprefix("lr-") if len(lines) > 1 else None)  # fmt: skip
        if len(lines) > 1:
            ax.legend(fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
