"""Adds the records of the results-at-real-budgets runs to the repository, so that the table and its
figure can be drawn again on a machine that never held the runs.

    python benchmarks/archive/keep_records.py runs/flagship [benchmarks/records/real-budgets]

A row takes hours of CPU and its run folder lives outside git (checkpoints and event files are large),
so a session's machine that is gone took the row's evidence with it: that happened to every row before
2026-12-03. Kept per run folder (OUT/{mae,mae-ct,...}, OUT/floors, OUT/rows/<name>): results.jsonl
(every measurement with its settings), log.txt (the stage stamps), config.yaml (the recipe the row
trained with, which labels it in the table) and training.json (the training minutes and starts summed
from TensorBoard's wall times, which benchmarks/archive/flagship_table.py reads when the event files are
absent). benchmarks/archive/flagship_table.py reads the kept folder like the original:

    python benchmarks/archive/flagship_table.py benchmarks/records/real-budgets --figure docs/figures/results-real-budgets.png
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from flagship_table import training_minutes  # benchmarks/archive/ is on sys.path when this script runs

KEPT = ("results.jsonl", "log.txt", "config.yaml")  # config.yaml: the recipe the row trained with
APPENDED = {"results.jsonl", "log.txt"}  # merged into the kept copy, never copied over it


def keep(out: Path, dest: Path) -> list[Path]:
    """The run folders of `out` that hold results, copied into `dest` (same relative paths)."""
    kept = []
    dest.mkdir(parents=True, exist_ok=True)
    for results in sorted(out.rglob("results.jsonl")):
        run = results.parent
        target = dest / run.relative_to(out)
        target.mkdir(parents=True, exist_ok=True)
        for name in KEPT:
            if (run / name).is_file():
                (merge if name in APPENDED else shutil.copyfile)(run / name, target / name)
        minutes, starts = training_minutes(run)
        if starts:
            (target / "training.json").write_text(json.dumps({"minutes": round(minutes, 1), "starts": starts}) + "\n")
        kept.append(target)
    if (out / "log.txt").is_file():
        merge(out / "log.txt", dest / "log.txt")
    for stamps in sorted((out / "logs").glob("*.stamps")):  # results_gpu.py's parallel fine-tunes
        (dest / "logs").mkdir(parents=True, exist_ok=True)
        merge(stamps, dest / "logs" / stamps.name)
    return kept


def merge(source: Path, kept: Path) -> None:
    """Appends to `kept` the lines of `source` it lacks. Logs and results only grow, but a run folder on a
    new machine starts empty: copying it over the kept one would drop what earlier machines measured.
    The table reads the last result of each kind, so a measurement taken again wins."""
    lines = kept.read_text().splitlines() if kept.is_file() else []
    have = set(lines)
    lines += [line for line in source.read_text().splitlines() if line not in have]
    kept.write_text("".join(line + "\n" for line in lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("dest", type=Path, nargs="?", default=Path(__file__).parent.parent / "records" / "real-budgets")
    args = parser.parse_args()
    for target in keep(args.out, args.dest):
        print(f"kept {target}")
