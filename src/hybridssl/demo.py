"""`hybridssl demo`: pretrain on Fashion-MNIST on the CPU, evaluate against the floors, show pictures.

Budget: about 10 minutes on 2 CPU cores (`--quick`: about one minute). Everything lands in one folder:
the pretraining run, results.jsonl, reconstructions.png, and a printed table.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path


from hybridssl.config import resolve
from hybridssl.data.sources import load_dataset
from hybridssl.engine.checkpoints import load_method
from hybridssl.engine.train import pretrain
from hybridssl.evaluation.run import EvalRequest, evaluate
from hybridssl.report.figures import reconstruction_grid

DEMO_METHOD = "mae"
FULL = {"epochs": 2, "limit_train": None, "probe_epochs": 30}
QUICK = {"max_steps": 20, "limit_train": 2000, "probe_epochs": 5, "limit_eval": 2000}


def run_demo(output: Path, quick: bool = False) -> None:
    budget = QUICK if quick else FULL
    if output.exists():
        print(f"hybridssl demo: replacing the previous demo in {output}")
        shutil.rmtree(output)
    start = time.perf_counter()
    flags = {
        "method": DEMO_METHOD, "dataset": "fashion-mnist", "model": "vit-pico", "batch_size": 256, "seed": 0,
        "accelerator": "cpu", "output": output / "pretrain", "limit_train": budget["limit_train"],
        "epochs": budget.get("epochs"), "max_steps": budget.get("max_steps"),
    }  # fmt: skip
    checkpoint = pretrain(resolve(flags))
    pretrain_seconds = time.perf_counter() - start

    rows = []
    for kind in ("trained", "random-init", "raw-pixels"):
        req = EvalRequest(
            checkpoint=checkpoint, dataset="fashion-mnist", protocol="knn", output=output, encoder_kind=kind,
            ks=(20,), epochs=budget["probe_epochs"], limit_train=budget.get("limit_eval"), limit_test=budget.get("limit_eval"),
        )  # fmt: skip
        rows += evaluate(req, ["knn", "linear"])

    test = load_dataset("fashion-mnist", "test").take(8, seed=0)
    method = load_method(checkpoint)
    grid = reconstruction_grid(method, test.images, method.info, output / "reconstructions.png")
    print_summary(rows, output, grid, pretrain_seconds, time.perf_counter() - start)


def print_summary(rows: list[dict], output: Path, grid: Path, pretrain_seconds: float, total_seconds: float) -> None:
    table = {(r["encoder"], r["protocol"]): r["value"] for r in rows}
    pooling = next(r["pooling"] for r in rows if r["encoder"] == "trained")
    print(f"\nFashion-MNIST test top-1 (%), vit-pico {DEMO_METHOD}, {pooling} pooling; pretraining {pretrain_seconds / 60:.1f} min, total {total_seconds / 60:.1f} min")
    print(f"{'features':<24}{'k-NN (k=20)':>12}{'linear':>10}")
    names = {"trained": f"{DEMO_METHOD} encoder", "random-init": "same ViT, random init", "raw-pixels": "raw pixels"}
    for kind, name in names.items():
        print(f"{name:<24}{table[(kind, 'knn')]:>12.2f}{table[(kind, 'linear')]:>10.2f}")
    print(f"\nresults:         {output / 'results.jsonl'}")
    print(f"reconstructions: {grid}")
    print(f"checkpoints:     {output / 'pretrain' / 'checkpoints'}")
    print(f"TensorBoard:     tensorboard --logdir {output / 'pretrain' / 'logs' / 'tensorboard'}")
