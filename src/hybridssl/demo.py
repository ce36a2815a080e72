"""`hybridssl demo`: MAE-CT's contrastive tuning of a trained MAE on Fashion-MNIST on the CPU, evaluated
against its floors, with pictures.

MAE-CT is the demo because it is the project in one command: an MAE encoder (stage 1), an NNCLR head
on the frozen encoder (stage 2) and contrastive tuning of the upper blocks (stage 3). Stage 1 ships
with the package (`pretrained/`: vit-pico MAE, 24 epochs on all 60k images, an hour on 2 CPU
cores; its row in BENCHMARKS.md gives the command), because a demo-sized MAE (2 epochs) learns too
little to show anything. The demo runs stages 2 and 3 from it on a seeded 20k-image third of the
training set; the budget is a fixed amount of work (steps, not minutes), the same on every machine.
Everything lands in one folder: the two stage runs, results.jsonl, reconstructions.png (from the
shipped MAE, the only stage with a pixel decoder), report.html, neighbours.html (what the MAE start
and the tuned encoder find similar, side by side) and a printed table that puts the tuned encoder next
to the MAE it started from, the same ViT at random init and raw pixels. A demo-sized tuning moves the
numbers little; the table also prints, clearly labelled, the full-budget MAE-CT rows from the same
shipped MAE as kept in the project's records (pretrained/full-budget.json), which are not re-run.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from hybridssl.config import resolve
from hybridssl.data.sources import load_dataset
from hybridssl.embedding.encoder import load_encoder
from hybridssl.embedding.sources import embed_source
from hybridssl.engine.stages import pretrain
from hybridssl.evaluation.monitor import monitor_callbacks
from hybridssl.evaluation.run import EvalRequest, evaluate
from hybridssl.report.figures import reconstruction_grid
from hybridssl.report.neighbours import write_neighbour_page
from hybridssl.report.run_report import write_report
from hybridssl.weights.ours import load_method

DEMO_METHOD = "mae-ct"
MAE_START = Path(__file__).parent / "pretrained" / "mae-vit-pico-fashion-mnist.ckpt"
FULL_BUDGET = Path(__file__).parent / "pretrained" / "full-budget.json"  # kept records, not re-run
FULL = {"batch_size": 256, "head_epochs": 1, "tune_epochs": 1, "limit_train": 20000, "probe_epochs": 20, "limit_test": None,
        "neighbour_images": 2000}  # fmt: skip
QUICK = {"batch_size": 256, "max_steps": 10, "head_epochs": 1, "tune_epochs": 1, "limit_train": 2000, "probe_epochs": 5, "limit_test": 2000,
         "neighbour_images": 500}  # fmt: skip


def run_demo(output: Path, quick: bool = False) -> None:
    budget = QUICK if quick else FULL
    if output.exists():
        print(f"hybridssl demo: replacing the previous demo in {output}")
        shutil.rmtree(output)
    start = time.perf_counter()
    flags = {
        "method": DEMO_METHOD, "dataset": "fashion-mnist", "model": "vit-pico", "batch_size": budget["batch_size"], "seed": 0,
        "accelerator": "cpu", "output": output / "pretrain", "limit_train": budget["limit_train"], "init_from": str(MAE_START),
        "max_steps": budget.get("max_steps"),
        "method_args": {"head_epochs": budget["head_epochs"], "tune_epochs": budget["tune_epochs"]},
    }  # fmt: skip
    tuned = pretrain(resolve(flags), monitor_callbacks)
    pretrain_seconds = time.perf_counter() - start

    encoders = {"MAE-CT encoder": (tuned, "trained"), "its MAE start (shipped)": (MAE_START, "trained"),
                "same ViT, random init": (tuned, "random-init"), "raw pixels": (tuned, "raw-pixels")}  # fmt: skip
    table = {}
    for name, (checkpoint, kind) in encoders.items():
        req = EvalRequest(
            checkpoint=checkpoint, dataset="fashion-mnist", protocol="knn", output=output, encoder_kind=kind, ks=(20,),
            epochs=budget["probe_epochs"], limit_train=budget["limit_train"], limit_test=budget["limit_test"],
        )  # fmt: skip
        table[name] = {row["protocol"]: row for row in evaluate(req, ["knn", "linear"])}

    test = load_dataset("fashion-mnist", "test").take(8, seed=0)
    mae = load_method(MAE_START)
    grid = reconstruction_grid(mae, test.images, mae.info, output / "reconstructions.png")
    report = write_report(output)
    neighbours = neighbour_page(tuned, output / "neighbours.html", budget["neighbour_images"])
    print_summary(table, output, grid, report, neighbours, tuning_steps(budget), pretrain_seconds, time.perf_counter() - start)


def neighbour_page(tuned: Path, output: Path, images: int) -> Path:
    """Nearest neighbours of the same seeded test images under the shipped MAE and the tuned encoder."""
    sets = []
    for name, checkpoint in (("its MAE start (shipped)", MAE_START), ("MAE-CT encoder (this demo)", tuned)):
        emb, _ = embed_source(load_encoder(checkpoint, device="cpu"), "fashion-mnist", None, "test", limit=images, progress=False)
        sets.append((name, emb))
    return write_neighbour_page(output, sets, queries=8, k=8, pairs=6)


def tuning_steps(budget: dict) -> int:
    """Optimizer steps of the demo's stages 2 and 3 (each capped by max_steps)."""
    per_epoch = budget["limit_train"] // budget["batch_size"]
    cap = budget.get("max_steps") or float("inf")
    return int(min(per_epoch * budget["head_epochs"], cap) + min(per_epoch * budget["tune_epochs"], cap))


def reading(table: dict[str, dict[str, dict]], steps: int) -> str:
    """What the table shows, in k-NN points: the shipped MAE's learning, then what the short tuning added."""
    knn = {name: rows["knn"]["value"] for name, rows in table.items()}
    learned = knn["its MAE start (shipped)"] - knn["same ViT, random init"]
    tuned = knn["MAE-CT encoder"] - knn["its MAE start (shipped)"]
    return (f"\nThe MAE start is {learned:+.1f} k-NN points from the same ViT at random init; the demo's short contrastive\n"
            f"tuning ({steps} steps on a third of the data) moved it {tuned:+.2f}: too few steps to show tuning's gain.")


def full_budget_rows() -> str:
    """The full-budget MAE-CT rows from the same shipped MAE, read from the kept records and labelled as such."""
    kept = json.loads(FULL_BUDGET.read_text())
    start = kept["start"]
    lines = ["\nThe same tuning at full budget (all 60k images; kept records, not run now: BENCHMARKS.md):",
             f"{'features':<44}{'steps':>7}{'k-NN (k=20)':>13}{'linear':>9}",
             f"{'its MAE start (shipped)':<44}{'':>7}{start['knn_k20']:>13.2f}{start['linear']:>9.2f}"]  # fmt: skip
    for row in kept["rows"]:
        name = f"{row['method']}, head {row['head_epochs']} + tune {row['tune_epochs']} epochs"
        gain = row["knn_k20"] - start["knn_k20"]
        lines.append(f"{name:<44}{row['steps']:>7,}{row['knn_k20']:>13.2f}{row['linear']:>9.2f}   ({gain:+.1f} k-NN)")
    return "\n".join(lines)


def print_summary(table: dict[str, dict[str, dict]], output: Path, grid: Path, report: Path, neighbours: Path, steps: int,
                  pretrain_seconds: float, total_seconds: float) -> None:  # fmt: skip
    pooling = table["MAE-CT encoder"]["knn"]["pooling"]
    print(f"\nFashion-MNIST test top-1 (%), vit-pico {DEMO_METHOD} stages 2-3 from the shipped MAE, {pooling} pooling; "
          f"tuning {pretrain_seconds / 60:.1f} min, total {total_seconds / 60:.1f} min")  # fmt: skip
    print(f"{'features':<26}{'k-NN (k=20)':>12}{'linear':>10}")
    for name, rows in table.items():
        print(f"{name:<26}{rows['knn']['value']:>12.2f}{rows['linear']['value']:>10.2f}")
    print(reading(table, steps))
    print(full_budget_rows())
    print(f"\nreport:          {report}")
    print(f"neighbours:      {neighbours} (the MAE start and the tuned encoder side by side)")
    print(f"results:         {output / 'results.jsonl'}")
    print(f"reconstructions: {grid}")
    print(f"checkpoints:     {output / 'pretrain'}/stage*/checkpoints")
    print(f"TensorBoard:     tensorboard --logdir {output / 'pretrain'}")
