"""Short selection runs behind configs/<method>/fashion-mnist.yaml ("Recipes for small images", BENCHMARKS.md).

Every method starts from the code's defaults (its section of docs/methods.md) and gets three or four
runs of one budget: 2 epochs on a seeded 20k-image subset (40k images seen: 156 steps at batch 256).
Round 1 compares the default base lr with 3x it, and 9x when 3x wins; round 2 takes the chosen lr to
batch 128 (twice the steps for the same images; the lr is scaled by the batch as always). Within 0.5
points of the best score (the noise) the default is kept, and the lower of two rates (short runs favour
high rates; the long schedules these recipes are for do not). MAE-CT tunes the shipped MAE (head 1 +
tune 1 epoch on the subset; the lr swept is stage 3's). Each run is scored by k-NN (k = 20) on a
class-stratified 10% hold-out of the train split (`evaluate --validation`): the test split is never
looked at. Resumable: a run whose score is recorded is not run again. Prints one markdown row per run,
then the shipped MAE's score (MAE-CT's start) and the floors' (the random-init ViT, raw pixels).

    python benchmarks/archive/tune_recipes.py [OUT] [--methods mae,mae-ct,...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

from hybridssl.config import resolve
from hybridssl.methods.mae_ct import MAE_CT_OPTIM

ROOT = Path(__file__).resolve().parents[2]  # the repository (this file: benchmarks/archive/)
HYBRIDSSL = os.environ.get("HYBRIDSSL", "hybridssl")
SHIPPED_MAE = ROOT / "src" / "hybridssl" / "pretrained" / "mae-vit-pico-fashion-mnist.ckpt"
METHODS = ["mae", "mae-ct", "macrl", "cmae", "simclr", "nnclr", "can", "mocov3"]
SUBSET, EPOCHS = 20000, 2
TIE = 0.5  # hold-out points: about the standard error of a k-NN score on 6,000 images


def pretrain_args(method: str, lr: float, batch: int, out: Path) -> list[str]:
    args = [HYBRIDSSL, "pretrain", "--method", method, "--dataset", "fashion-mnist", "--model", "vit-pico",
            "--limit-train", str(SUBSET), "--batch-size", str(batch), "--output", str(out), "--no-progress-bar"]
    if method == "mae-ct":  # the lr of stage 3, which tunes the encoder (--lr is stage 1's, skipped here)
        return [*args, "--init-from", str(SHIPPED_MAE), "--set", "method_args.head_epochs=1",
                "--set", "method_args.tune_epochs=1", "--set", f"method_args.tune_optim.base_lr={lr!r}"]
    return [*args, "--lr", repr(lr), "--epochs", str(EPOCHS)]


def last_checkpoint(method: str, out: Path) -> Path:
    return out / ("stage3-tune" if method == "mae-ct" else ".") / "checkpoints" / "last.ckpt"


def score(out: Path) -> float | None:
    results = out / "results.jsonl"
    if not results.is_file():
        return None
    for line in results.read_text().splitlines():
        r = json.loads(line)
        if r["protocol"] == "knn" and r["settings"].get("k") == 20 and r["split"] != "test":
            return float(r["value"])
    return None


def holdout_knn(checkpoint: Path, out: Path, *extra: str) -> float:
    if score(out) is None:
        subprocess.run([HYBRIDSSL, "evaluate", "--checkpoint", str(checkpoint), *extra, "--protocol", "knn", "--k", "20",
                        "--validation", "--output", str(out)], check=True, stdout=subprocess.DEVNULL)
    return score(out)


def run(method: str, name: str, lr: float, batch: int, root: Path) -> dict:
    out = root / method / name
    record = out / "selection.json"
    if record.is_file():
        return json.loads(record.read_text())
    out.mkdir(parents=True, exist_ok=True)
    seconds = out / "pretrain-seconds.txt"  # written when pretraining ended: a rerun only evaluates
    if not seconds.is_file():
        start = time.time()
        with open(out / "pretrain.log", "a") as log:  # --resume: continues a killed run, or starts afresh
            command = [*pretrain_args(method, lr, batch, out), "--resume"]
            subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
        seconds.write_text(f"{time.time() - start:.0f}\n")
    wall = int(seconds.read_text())
    row = {"method": method, "run": name, "base_lr": lr, "batch_size": batch, "pretrain_seconds": wall,
           "holdout_knn20": holdout_knn(last_checkpoint(method, out), out)}
    record.write_text(json.dumps(row) + "\n")
    return row


def tune(method: str, root: Path) -> list[dict]:
    # the code's defaults, not the config file: that holds what these runs chose, and rerunning from it
    # would start the grid at the chosen rate
    base = MAE_CT_OPTIM["base_lr"] if method == "mae-ct" else resolve({"method": method}).optim.base_lr
    rows = [run(method, "lr1x-b256", base, 256, root), run(method, "lr3x-b256", 3 * base, 256, root)]
    if rows[1]["holdout_knn20"] > rows[0]["holdout_knn20"]:  # the best lr at the grid's edge: go one further
        rows.append(run(method, "lr9x-b256", 9 * base, 256, root))
    best = choose(rows)
    rows.append(run(method, best["run"].replace("b256", "b128"), best["base_lr"], 128, root))
    return [{**r, "chosen": r is choose(rows)} for r in rows]


def choose(rows: list[dict]) -> dict:
    """Among the runs within TIE of the best score: the fewest changes from the default recipe (rows[0]),
    then the lowest lr, then the best score. A change has to beat the default by more than the noise."""
    default = rows[0]
    top = max(r["holdout_knn20"] for r in rows)
    close = [r for r in rows if r["holdout_knn20"] >= top - TIE]
    changes = lambda r: (r["base_lr"] != default["base_lr"]) + (r["batch_size"] != default["batch_size"])  # noqa: E731
    return min(close, key=lambda r: (changes(r), r["base_lr"], -r["holdout_knn20"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="runs/tune-recipes", type=Path)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    print("| method | run | base lr | batch | pretraining (s) | hold-out k-NN (k=20) | chosen |")
    print("|---|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        for r in tune(method, args.out):
            cells = [r["method"], r["run"], f"{r['base_lr']:.2e}", r["batch_size"], r["pretrain_seconds"],
                     f"{r['holdout_knn20']:.2f}", "yes" if r["chosen"] else ""]
            print("| " + " | ".join(map(str, cells)) + " |", flush=True)
    for name, folder, extra in [("the shipped MAE (MAE-CT's start)", "shipped-mae", []),
                                ("random init (vit-pico, floor)", "random-init", ["--random-init"]),
                                ("raw pixels (floor)", "raw-pixels", ["--raw-pixels"])]:
        print(f"| {name} | – | – | – | – | {holdout_knn(SHIPPED_MAE, args.out / folder, *extra):.2f} | |")


if __name__ == "__main__":
    main()
