"""Where the time of one training step goes: torch.profiler's operator table for `hybridssl bench`'s step.

    python benchmarks/profile_step.py --method mae --model vit-tiny --batch-size 128 --steps 3

Prints img/s of a few unprofiled steps, then the operators sorted by self CPU (or CUDA) time.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from hybridssl.config import resolve
from hybridssl.engine.bench import sync, synthetic_info, training_step
from throughput import header  # benchmarks/ is on sys.path when this script runs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--method", default="mae")
    p.add_argument("--model", default="vit-tiny")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rows", type=int, default=20)
    args = p.parse_args()
    run = resolve({"method": args.method, "model": args.model, "dataset": args.dataset, "batch_size": args.batch_size})
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    step, _ = training_step(run, synthetic_info(args.dataset, None, None), dev)
    for _ in range(3):
        step()
    sync(dev)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(dev)
    print(header("profile_step.py", str(dev)))
    print(f"{args.method} {args.model} batch {args.batch_size}: {args.steps * args.batch_size / (time.perf_counter() - start):.0f} img/s unprofiled")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
    sort = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=args.rows))


if __name__ == "__main__":
    main()
