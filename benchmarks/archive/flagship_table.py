"""The rows of BENCHMARKS.md's results at real budgets, read from the recorded results (no hand copying).

    python benchmarks/archive/flagship_table.py runs/flagship [--figure docs/figures/results-real-budgets.png]

Reads OUT/{mae,mae-ct,floors}/results.jsonl (and OUT/mae-ct-tune8/, the longer tuning, when present)
and OUT/log.txt (the stage start times) written by benchmarks/archive/flagship_mae_ct.sh, OUT/floors/log.txt
of benchmarks/archive/floors.sh, and OUT/rows/<method>/{results.jsonl,log.txt,config.yaml} of
benchmarks/archive/results_row.sh, and prints one markdown row per encoder that has results: k-NN (k=20),
linear probe, fine-tuning (benchmarks/archive/flagship_finetune.sh), k-means cluster accuracy and NMI, and the
linear probe on 1% and 10% of the labels (mean of the seeds), then each row's training time summed over
every session that ran it (TensorBoard's wall times; the log stamps leave out a stage a killed session
cut off). --figure also draws k-NN and linear probe of every measured encoder against the floors
(hybridssl.report.scores). OUT can also be the copy benchmarks/archive/keep_records.py keeps in the repository
(benchmarks/records/real-budgets: results, log stamps, configs and training times, no checkpoints).
"""

from __future__ import annotations

import argparse
import json
import textwrap
from datetime import datetime
from pathlib import Path

import yaml

from hybridssl.evaluation.results import read_results


def pick(results: list[dict], encoder: str, protocol: str, **match) -> str:
    found = [r for r in results if r["encoder"] == encoder and r["protocol"] == protocol
             and all(r.get(k, r.get("settings", {}).get(k)) == v for k, v in match.items())]  # fmt: skip
    return f"{found[-1]['value']:.2f}" if found else "–"


def stage_minutes(log: Path) -> dict[str, float]:
    """Minutes between consecutive stamps of one run's log, keyed by the stamp's text and summed over
    the sessions that resumed it. A stage cut off by a killed session is not counted (no end time)."""
    stamps = []
    for line in log.read_text().splitlines():
        when, _, what = line.partition("] ")
        stamps.append((datetime.strptime(when.strip("["), "%Y-%m-%dT%H:%M:%SZ"), what))
    minutes: dict[str, float] = {}
    for (when, what), (later, following) in zip(stamps, stamps[1:]):
        if following != "session start" and what != "session start" and not what.endswith("done"):
            minutes[what] = minutes.get(what, 0.0) + (later - when).total_seconds() / 60
    return minutes


def training_minutes(run: Path) -> tuple[float, int]:
    """Minutes of training in a run folder (all its stages), from the wall times TensorBoard stamps on
    every logged value: first to last value of each session's event file, summed. Unlike the log stamps,
    this counts a session that was killed mid-stage (the steps it trained past its last checkpoint are
    trained again, and counted again)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    total, sessions = 0.0, 0
    if not any(run.rglob("events.out.tfevents.*")) and (kept := run / "training.json").is_file():
        summary = json.loads(kept.read_text())  # benchmarks/archive/keep_records.py: the events stayed behind
        return summary["minutes"], summary["starts"]
    for events in sorted(run.rglob("events.out.tfevents.*")):
        times = [e.wall_time for e in EventFileLoader(str(events)).Load() if e.HasField("summary")]
        if len(times) > 1:
            total, sessions = total + (max(times) - min(times)) / 60, sessions + 1
    return total, sessions


def draw(encoders: list[tuple[str, list[dict], str]], path: Path) -> None:
    from hybridssl.report.scores import probe_scores, scores_png

    def probes(results: list[dict], kind: str) -> dict[str, float | None]:
        return probe_scores([r for r in results if r["encoder"] == kind])

    trained = [(textwrap.fill(name, 36), probes(results, kind)) for name, results, kind in encoders if kind == "trained"]  # long labels on lines
    floors = [(name, probes(results, kind)) for name, results, kind in encoders if kind != "trained"]
    png = scores_png([(n, s) for n, s in trained if any(v is not None for v in s.values())], floors,
                     "Fashion-MNIST test top-1, frozen vit-pico features (BENCHMARKS.md, results at real budgets)")
    if png is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        print(f"\nwrote {path}")


def row_label(row: Path) -> str:
    """What a row trained, from the config its pretraining wrote (a row whose folder only links a
    checkpoint, like the shipped MAE, has none: its records' README says what it is)."""
    config = row / "config.yaml"
    if not config.is_file():
        return f"{row.name} (linked checkpoint)"
    cfg = yaml.safe_load(config.read_text())  # written whole by pretraining: every key is there
    args = cfg["method_args"]
    if "tune_epochs" not in args:
        return f"{row.name} ({cfg['method']}, {epochs(cfg['epochs'])}, batch {cfg['batch_size']}, base lr {cfg['optim']['base_lr']:g})"
    start = Path(cfg["init_from"]) if cfg.get("init_from") else None  # MAE-CT's stages 2-3: on what?
    on = "after its own MAE" if start is None else f"on rows/{start.parts[-3]}" if start.parent.name == "checkpoints" else f"on {start.name}"
    return f"{row.name} ({cfg['method']}: head {epochs(args['head_epochs'])} + tune {epochs(args['tune_epochs'])} {on})"


def epochs(n: int | None) -> str:
    return "default epochs" if n is None else f"{n} epoch{'' if n == 1 else 's'}"


def main(out: Path, figure: Path | None = None) -> None:
    encoders = [
        ("MAE (paper recipe)", read_results(out / "mae" / "results.jsonl"), "trained"),
        ("MAE-CT (from that MAE)", read_results(out / "mae-ct" / "results.jsonl"), "trained"),
        *((("MAE-CT, tune 8 epochs", read_results(longer), "trained"),) if (longer := out / "mae-ct-tune8" / "results.jsonl").is_file() else ()),
        *((row_label(row), read_results(row / "results.jsonl"), "trained") for row in sorted((out / "rows").glob("*"))),
        ("random init (same ViT)", read_results(out / "floors" / "results.jsonl"), "random-init"),
        ("raw pixels", read_results(out / "floors" / "results.jsonl"), "raw-pixels"),
    ]
    print("| encoder | pooling | k-NN (k=20) | linear | fine-tune | cluster acc | NMI | linear 1% | linear 10% |")
    print("|---|---|---|---|---|---|---|---|---|")
    encoders = [(name, results, kind) for name, results, kind in encoders if any(r["encoder"] == kind for r in results)]
    for name, results, kind in encoders:
        pooling = next((r["pooling"] for r in results if r["encoder"] == kind), "–")
        print(f"| {name} | {pooling} | {pick(results, kind, 'knn', k=20)} | {pick(results, kind, 'linear')} | "
              f"{pick(results, kind, 'finetune')} | {pick(results, kind, 'clustering', metric='cluster_accuracy')} | {pick(results, kind, 'clustering', metric='nmi')} | "
              f"{pick(results, kind, 'lowshot', subset='1%')} | {pick(results, kind, 'lowshot', subset='10%')} |")  # fmt: skip
    print("\nTimes between log stamps (a stretch a killed session cut off is not counted: training times below)")
    # logs/*.stamps: the fine-tunes benchmarks/archive/results_gpu.py runs beside the rows, each with its own log
    for log in [out / "log.txt", out / "floors" / "log.txt", *sorted((out / "rows").glob("*/log.txt")), *sorted((out / "logs").glob("*.stamps"))]:
        if log.is_file():
            print()
            for what, minutes in stage_minutes(log).items():
                print(f"- {what}: {minutes:.1f} min")
    print()
    for row in sorted((out / "rows").glob("*")):
        minutes, sessions = training_minutes(row)
        if sessions:
            print(f"- {row.name}: {minutes:.1f} min of training over {sessions} start(s) of a stage (TensorBoard wall times; MAE-CT rows have two stages)")
    if figure is not None:
        draw(encoders, figure)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", default=Path("runs/flagship"))
    parser.add_argument("--figure", type=Path, help="also write the dot plot of k-NN and linear probe here (PNG)")
    args = parser.parse_args()
    main(args.out, args.figure)
