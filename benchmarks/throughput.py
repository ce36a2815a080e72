"""Training-step throughput of methods x models on this machine, measured side by side.

Each configuration runs `hybridssl bench --json` in a fresh process; rounds alternate the
configurations so that machine noise hits all of them alike, and the median of the rounds is reported.

    python benchmarks/throughput.py --methods mae --models vit-pico,vit-tiny --batch-size 256 --rounds 3
    python benchmarks/throughput.py --methods mae --models vit-pico --tcmalloc both   # with / without tcmalloc
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time


def run_bench(method: str, model: str, batch: int, steps: int, tcmalloc: bool, extra: list[str]) -> dict:
    env = {**os.environ, "HYBRIDSSL_TCMALLOC": "1" if tcmalloc else "0"}
    cmd = [sys.executable, "-m", "hybridssl", "bench", "--method", method, "--model", model,
           "--batch-size", str(batch), "--steps", str(steps), "--json", *extra]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def header(script: str, device: str) -> str:
    """The HTML comment above each table: date, machine and the exact command."""
    return (f"<!-- {time.strftime('%Y-%m-%d')} on {platform.node()} ({os.cpu_count()} CPUs, {device}); "
            f"command: python benchmarks/{script} {' '.join(sys.argv[1:])} -->")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--methods", default="mae")
    p.add_argument("--models", default="vit-pico,vit-tiny")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tcmalloc", choices=("on", "off", "both"), default="on")
    p.add_argument("--extra", default="", help="extra bench flags, e.g. '--dataset cifar10'")
    args = p.parse_args()
    variants = {"on": [True], "off": [False], "both": [True, False]}[args.tcmalloc]
    configs = [(m, model, t) for m in args.methods.split(",") for model in args.models.split(",") for t in variants]
    samples: dict[tuple, list[float]] = {c: [] for c in configs}
    last: dict[tuple, dict] = {}
    for _ in range(args.rounds):
        for c in configs:
            result = run_bench(c[0], c[1], args.batch_size, args.steps, c[2], args.extra.split())
            samples[c].append(result["images_per_second"])
            last[c] = result
    print(header("throughput.py", last[configs[0]]["device"]))
    print("| method | model | batch | tcmalloc | img/s (median) | rounds | ms/step | GFLOP/step | FLOP/s vs matmul peak | peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c in configs:
        r = last[c]
        med = statistics.median(samples[c])
        rounds = ", ".join(f"{s:.0f}" for s in samples[c])
        utilization = r["flops_per_step"] * med / args.batch_size / r["matmul_peak_flops"]
        print(f"| {c[0]} | {c[1]} | {args.batch_size} | {'on' if c[2] else 'off'} | {med:.0f} | {rounds} | "
              f"{1000 * args.batch_size / med:.0f} | {r['flops_per_step'] / 1e9:.1f} | "
              f"{100 * utilization:.0f}% of {r['matmul_peak_flops'] / 1e9:.0f} GFLOP/s | {r['peak_memory_mb']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
