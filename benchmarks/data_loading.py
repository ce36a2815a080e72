"""Streaming image folders at real scale: start-up, memory, decode + crop throughput, data wait, DDP.

Generates (once, cached under --root) ImageNet-style folders (train/ + val/) of N photo-like JPEGs,
300-500 px (hybridssl.data.synthetic), and measures side by side in one invocation:

1. `hybridssl pretrain` (MAE, vit-small/16 at 224, batch 32, --loader stream, 2 workers, 1 step) for
   each N, with a cold file index (a fresh HYBRIDSSL_INDEX_DIR) and with the cached one, and the
   in-memory path (--loader memory) at the smallest N: seconds from the command's start to the file
   index, the data statistics, the first batch in hand and the end of step 1 (the progress bar's
   "1/1", read as the output arrives), the command's wall time, and the peak memory of the main
   process and of main process + DataLoader workers (RSS summed over the process tree from /proc every
   0.1 s; PSS, which splits shared pages among the processes, every 0.5 s). The listing and the
   cached-index load are also timed in this process.
2. Decode + crop throughput at 224 through a torch DataLoader with 1 and 2 workers: our CropDataset
   (torchvision.io decode at full resolution, bicubic antialiased RandomResizedCrop + flip; one MAE
   crop, two SimCLR crops) against torchvision's ImageFolder (PIL) + transforms.v2 built here, on the
   same files; img/s after the first batch (worker start + first reads timed apart); rounds alternate
   the pipelines, medians.
3. The share of a training step spent waiting for data (the trainer's logged `wait%` and `img/s`,
   de-smoothed to per-step values) for MAE vit-small/16 at 224, batch 32, 1 and 2 workers;
   steady-state steps only.
4. 2-process DDP on CPU (gloo), SimCLR vit-pico/16 at 224, batch 16 per rank, 1 worker per rank:
   per-step wall time and img/s with each rank augmenting its own part (default) vs the whole global
   batch (global_batch_views=true), and per rank and step the time of decoding, of cutting the crops
   (workers) and of finishing the views (kornia, in the rank process).

Every training run is `hybridssl pretrain` run by a small wrapper (TIMED_CLI below) that calls the
CLI's main() with tcmalloc preloaded as the CLI does, after wrapping a few of hybridssl's functions
with timers in place (nothing in src/ changes); the per-sample timers append a line to a log file
(tens of microseconds against milliseconds of decoding).

    python benchmarks/data_loading.py                 # sizes 10000,100000: ~8 min on an idle 2-core VM, ~17 min
                                                      # under load; generating 100k JPEGs once: ~18 min
    python benchmarks/data_loading.py --quick         # tiny sizes, few steps: checks the script (3-5 min)
    python benchmarks/data_loading.py --sections decode,wait --sizes 10000
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from throughput import header  # benchmarks/ is on sys.path when this script runs

SECTIONS = ("startup", "decode", "wait", "ddp")
TIMING_ENV = "HYBRIDSSL_BENCH_TIMING"

# `hybridssl pretrain ARGS` as the CLI runs it (cli.main after its tcmalloc re-exec, which the caller's
# environment reproduces), with hybridssl's own functions timed in place (nothing in src/ changes):
# wall-clock marks of the run's phases (file index ready, folder decoded into memory, data statistics
# done, first batch in hand), each DataLoader sample (decode + crops) and its crops in the workers keyed
# by the rank process's pid, and each step's device-side finish of the views (method_batch).
TIMED_CLI = """
import os, sys, time
import torch
import hybridssl.data.streaming as streaming
import hybridssl.data.training_set as training_set
import hybridssl.engine.module as module
import hybridssl.engine.train as train

LOG = os.environ["HYBRIDSSL_BENCH_TIMING"]


def note(line):
    with open(LOG, "a") as f:
        f.write(line + "\\n")


def mark(name, function):
    def marked(*args, **kwargs):
        out = function(*args, **kwargs)
        note(f"mark {os.getpid()} {time.time():.6f} {name}")
        return out
    return marked


_cut, _get, _batch = streaming.cut_crops, streaming.CropDataset.__getitem__, module.method_batch
first_batch = []


def cut_crops(image, crops, seed):
    start = time.perf_counter()
    out = _cut(image, crops, seed)
    note(f"crop {os.getppid()} {time.perf_counter() - start:.6f}")
    return out


def getitem(self, key):
    start = time.perf_counter()
    out = _get(self, key)
    note(f"sample {os.getppid()} {time.perf_counter() - start:.6f}")
    return out


def method_batch(method, batch):
    if not first_batch:
        first_batch.append(True)
        note(f"mark {os.getpid()} {time.time():.6f} batch1")
    start = time.perf_counter()
    out = _batch(method, batch)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    images = len(batch["crops"][0]) if "crops" in batch else len(batch["images"])
    note(f"finish {os.getpid()} {time.perf_counter() - start:.6f} {rank} {images}")
    return out


streaming.cut_crops, streaming.CropDataset.__getitem__, module.method_batch = cut_crops, getitem, method_batch
for name, attr in (("index", "record_index"), ("index", "folder_index"), ("decoded", "decode_index")):
    if hasattr(training_set, attr):  # record_index: the name since shards; folder_index before
        setattr(training_set, attr, mark(name, getattr(training_set, attr)))
train.training_info = mark("stats", train.training_info)

from hybridssl.cli import main

raise SystemExit(main(sys.argv[1:]))
"""


def log(message: str) -> None:
    load = os.getloadavg()[0]
    print(
        f"[data_loading {time.strftime('%H:%M:%S')} load {load:.1f}] {message}", file=sys.stderr, flush=True
    )


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        import platform

        return platform.processor() or "unknown CPU"


def tcmalloc_env() -> dict[str, str]:
    """The environment the CLI would give itself (cli.preload_tcmalloc), for runs that bypass its re-exec."""
    import glob

    from hybridssl.cli import TCMALLOC_GLOBS

    libs = [p for pattern in TCMALLOC_GLOBS for p in glob.glob(pattern)]
    if not libs or os.environ.get("HYBRIDSSL_TCMALLOC", "1") == "0":
        return {}
    return {"LD_PRELOAD": " ".join(filter(None, [libs[0], os.environ.get("LD_PRELOAD", "")]))}


# ----------------------------------------------------------------------------- the folders


def count_images(folder: Path) -> int:
    return (
        sum(1 for _, _, files in os.walk(folder) for f in files if f.endswith(".jpg"))
        if folder.is_dir()
        else 0
    )


def ensure_folder(root: Path, n: int) -> Path:
    """root/n{N}: N photo-like JPEGs (train/ + val/), reused when complete. Seed 0 draws image i the same
    way whatever N is, so a smaller folder is hard-linked from a complete larger one when there is one."""
    folder = root / f"n{n}"
    if count_images(folder) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    larger = sorted(int(p.name[1:]) for p in root.glob("n*") if p.name[1:].isdigit() and int(p.name[1:]) > n)
    source = next((root / f"n{m}" for m in larger if count_images(root / f"n{m}") == m), None)
    start = time.perf_counter()
    if source is not None:
        log(f"linking the first {n} images of {source} into {folder}")
        for current, _, files in os.walk(source):
            for f in files:
                match = re.fullmatch(r"img(\d+)\.jpg", f)
                if match and int(match.group(1)) < n:
                    target = folder / Path(current).relative_to(source)
                    target.mkdir(parents=True, exist_ok=True)
                    os.link(Path(current) / f, target / f)
    else:
        from hybridssl.data.synthetic import write_photo_folder

        log(f"generating {n} photo-like JPEGs into {folder} (~6-11 ms each here)")
        write_photo_folder(folder, n, layout="train_val", seed=0)
    if count_images(folder) != n:
        raise RuntimeError(f"{folder}: expected {n} images, found {count_images(folder)}")
    log(f"{folder} ready in {time.perf_counter() - start:.0f} s")
    return folder


# ----------------------------------------------------------------------------- running the CLI


PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def descendants(pid: int) -> list[int]:
    """pid and every process below it (/proc/PID/task/TID/children)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return found


def rss_kb(pid: int) -> int:
    """Resident set of a process in kB (cheap: /proc/PID/statm); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_KB
    except (OSError, IndexError, ValueError):
        return 0


def pss_kb(pid: int) -> int:
    """Proportional set (shared pages split among their users) in kB: /proc/PID/smaps_rollup, which walks
    the page tables, so it is read less often than the RSS."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("Pss:")), 0)
    except OSError:
        return 0


class PeakMemory(threading.Thread):
    """Polls a process tree: peak RSS of the root and peak sum of RSS over root + descendants every
    `interval` s, peak sum of PSS every `pss_every` polls; `cpu` is the CPU time the polling took."""

    def __init__(self, pid: int, interval: float = 0.1, pss_every: int = 5) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.pss_every = pid, interval, pss_every
        self.main_rss = self.tree_rss = self.tree_pss = 0  # kB
        self.max_processes = 0
        self.cpu = 0.0
        self.done = threading.Event()

    def run(self) -> None:
        polls = 0
        while not self.done.is_set():
            start = time.thread_time()
            pids = descendants(self.pid)
            sizes = [rss_kb(p) for p in pids]
            self.main_rss = max(self.main_rss, sizes[0])
            self.tree_rss = max(self.tree_rss, sum(sizes))
            self.max_processes = max(self.max_processes, sum(1 for s in sizes if s))
            if polls % self.pss_every == 0:
                self.tree_pss = max(self.tree_pss, sum(pss_kb(p) for p in pids))
            polls += 1
            self.cpu += time.thread_time() - start
            self.done.wait(self.interval)


MARKS = {
    "loop": re.compile(rb"Epoch 0:"),
    "step1": re.compile(rb"\| 1/\d+ \["),
    "step2": re.compile(rb"\| 2/\d+ \["),
}


def run_command(cmd: list[str], env: dict[str, str], memory: bool = False) -> dict:
    """Runs a command; seconds from its start to each progress-bar mark as the output arrives, its wall
    time, and (memory) the peak memory of its process tree."""
    started_at = time.time()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    poller = PeakMemory(proc.pid) if memory else None
    if poller:
        poller.start()
    out, marks = bytearray(), {}
    fd = proc.stdout.fileno()
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        now = time.perf_counter() - start
        out += chunk
        tail = bytes(out[-8192:])
        for name, pattern in MARKS.items():
            if name not in marks and pattern.search(tail):
                marks[name] = now
    code = proc.wait()
    wall = time.perf_counter() - start
    if poller:
        poller.done.set()
        poller.join()
    text = out.decode(errors="replace").replace("\r", "\n")
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({code}):\n" + "\n".join(text.splitlines()[-30:]))
    result = {"wall": wall, "started_at": started_at, **marks, "output": text}
    if poller:
        result |= {"main_rss": poller.main_rss / 1024, "tree_rss": poller.tree_rss / 1024,
                   "tree_pss": poller.tree_pss / 1024, "processes": poller.max_processes, "poll_cpu": poller.cpu}  # fmt: skip
    return result


def pretrain_args(folder: Path, output: Path, *, method: str = "mae", model: str = "vit-small", batch: int = 32,
                  steps: int = 1, loader: str = "stream", workers: int = 2, extra: tuple[str, ...] = ()) -> list[str]:  # fmt: skip
    return ["pretrain", "--method", method, "--dataset", "folder", "--data-dir", str(folder), "--image-size", "224",
            "--patch-size", "16", "--model", model, "--batch-size", str(batch), "--max-steps", str(steps),
            "--loader", loader, "--num-workers", str(workers), "--output", str(output),
            "--set", "log_every_n_steps=1", *extra]  # fmt: skip


def parse_timing(path: Path, started_at: float, drop: int) -> dict:
    """The wrapper's log -> {"marks": phase -> seconds since the command started (first process),
    "ranks": rank -> images per step, mean seconds per sample (decode + crops) and per crop call in the
    workers, median seconds of the device-side finish over the steps after the first `drop`}."""
    marks: dict[str, float] = {}
    finish: dict[int, list[tuple[int, float, int]]] = {}
    worker: dict[str, dict[int, list[float]]] = {"sample": {}, "crop": {}}
    for line in path.read_text().splitlines() if path.exists() else []:
        kind, pid, value, *rest = line.split()
        if kind == "mark":
            marks.setdefault(rest[0], float(value) - started_at)
        elif kind == "finish":
            finish.setdefault(int(pid), []).append((int(rest[0]), float(value), int(rest[1])))
        else:
            worker[kind].setdefault(int(pid), []).append(float(value))
    ranks = {}
    for pid, rows in finish.items():
        samples, crops = worker["sample"].get(pid, [0.0]), worker["crop"].get(pid, [0.0])
        ranks[rows[0][0]] = {"images": rows[0][2], "finish": statistics.median(s for _, s, _ in rows[drop:] or rows),
                             "sample": statistics.fmean(samples), "crop": statistics.fmean(crops), "loaded": len(samples)}  # fmt: skip
    return {"marks": marks, "ranks": ranks}


def pretrain(args: list[str], work: Path, index_dir: Path, memory: bool = False, drop: int = 0) -> dict:
    """`hybridssl pretrain ARGS` through the timed wrapper (TIMED_CLI), with tcmalloc preloaded as the
    CLI does; the run's output folder (--output) is left for the caller to read and remove."""
    wrapper, timing = work / "timed_cli.py", work / "timing.log"
    wrapper.write_text(TIMED_CLI)
    timing.unlink(missing_ok=True)
    env = {**os.environ, **tcmalloc_env(), "HYBRIDSSL_INDEX_DIR": str(index_dir), TIMING_ENV: str(timing)}
    result = run_command([sys.executable, str(wrapper), *args], env, memory)
    return result | parse_timing(timing, result["started_at"], drop)


def steady_steps(metrics: Path, drop: int, global_batch: int) -> list[dict]:
    """Per-step (step, seconds, wait seconds, wait %) of the steps after the first `drop`, recovered from
    the trainer's exponentially smoothed img/s and wait% (engine/callbacks.Throughput)."""
    from hybridssl.engine.callbacks import Throughput

    s = Throughput().smoothing
    with open(metrics, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("img/s") and r.get("wait%")]
    steps, previous = [], None
    for r in rows:
        rate, share = float(r["img/s"]), float(r["wait%"])
        if previous is None:
            step_rate, step_share = rate, share
        else:
            step_rate, step_share = (rate - s * previous[0]) / (1 - s), (share - s * previous[1]) / (1 - s)
        previous = (rate, share)
        seconds = global_batch / step_rate
        steps.append({"step": int(r["step"]), "seconds": seconds, "wait": seconds * step_share / 100,
                      "share": step_share, "logged_share": share})  # fmt: skip
    return [x for x in steps if x["step"] >= drop]


def fmt(values: list[float], digits: int = 1) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def median(values) -> float:
    values = [v for v in values if not math.isnan(v)]  # NaN: a mark that was not reached
    return statistics.median(values) if values else float("nan")


def med(runs: list[dict], key: str, inner: str | None = None) -> float:
    """Median over runs of run[key] (or run[key][inner]); NaN where missing."""
    return median((r.get(key, {}) if inner else r).get(inner or key, float("nan")) for r in runs)


# ----------------------------------------------------------------------------- 1. start-up and memory


def listing_times(train: Path, index_dir: Path) -> tuple[int, float, float, float]:
    """(files, cold listing + save s, cached load s, index file kB), in this process."""
    from hybridssl.data import index as index_module

    os.environ["HYBRIDSSL_INDEX_DIR"] = str(index_dir)
    try:
        index_module.file_index(
            train.parent / "val", cache=True
        )  # imports and first-call costs out of the way
        start = time.perf_counter()
        built = index_module.file_index(train)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        loaded = index_module.file_index(train)
        cached = time.perf_counter() - start
        assert len(loaded) == len(built)
        size = index_module._cache_file(train).stat().st_size / 1024
    finally:
        del os.environ["HYBRIDSSL_INDEX_DIR"]
    return len(built), cold, cached, size


def section_startup(args, folders: dict[int, Path], work: Path, device: str) -> None:
    shared_index = work / "index-shared"
    listing = {}
    for n, folder in folders.items():
        listing[n] = listing_times(folder / "train", shared_index)
        log(f"listing n={n}: {listing[n]}")
    configs = [(n, "stream", index) for n in folders for index in ("cold", "cached")]
    samples: dict[tuple, list[dict]] = {c: [] for c in configs}
    out = work / "run"
    for r in range(args.rounds_startup):
        for c in configs:
            n, loader, index = c
            index_dir = (
                Path(tempfile.mkdtemp(dir=work, prefix="index-cold-")) if index == "cold" else shared_index
            )
            shutil.rmtree(out, ignore_errors=True)
            result = pretrain(
                pretrain_args(folders[n], out, steps=1, loader=loader, workers=2),
                work,
                index_dir,
                memory=True,
            )
            shutil.rmtree(out, ignore_errors=True)
            if index == "cold":
                shutil.rmtree(index_dir, ignore_errors=True)
            samples[c].append(result)
            log(f"startup {c} round {r}: wall {result['wall']:.1f} s, marks {result['marks']}, step 1 at "
                f"{result.get('step1', float('nan')):.1f} s, main RSS {result['main_rss']:.0f} MB, tree RSS {result['tree_rss']:.0f} MB, "
                f"tree PSS {result['tree_pss']:.0f} MB, {result['processes']} processes, polling took {result['poll_cpu']:.2f} s CPU")  # fmt: skip
    if not args.no_memory:
        n = min(folders)
        c = (n, "memory", "cached")
        shutil.rmtree(out, ignore_errors=True)
        log(f"--loader memory on n={n} (decodes every training image first)")
        samples[c] = [
            pretrain(
                pretrain_args(folders[n], out, steps=1, loader="memory", workers=2),
                work,
                shared_index,
                memory=True,
            )
        ]
        shutil.rmtree(out, ignore_errors=True)
        log(
            f"memory: {samples[c][0]['marks']}, wall {samples[c][0]['wall']:.1f} s, tree RSS {samples[c][0]['tree_rss']:.0f} MB"
        )
        configs.append(c)

    print(header("data_loading.py", device))
    print(
        "| images (train + val) | train files indexed | listing + index save, cold (s) | cached index load (s) | index file (kB) |"
    )
    print("|---|---|---|---|---|")
    for n, (files, cold, cached, size) in listing.items():
        print(f"| {n} | {files} | {cold:.3f} | {cached:.3f} | {size:.0f} |")
    print()
    print(header("data_loading.py", device))
    print("| images (train + val) | loader | file index | index ready (s) | decoded into memory (s) | data statistics done (s) | "
          "first batch in hand (s) | step 1 done (s) | command wall (s) | peak RSS main (MB) | peak RSS main + workers (MB) | "
          "peak PSS main + workers (MB) | rounds: step 1 done (s) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in configs:
        runs = samples[c]
        threads = min(8, os.cpu_count() or 1)
        loader = f"{c[1]} ({'2 workers' if c[1] == 'stream' else f'{threads} decode threads'})"
        decoded = f"{med(runs, 'marks', 'decoded'):.1f}" if c[1] == "memory" else "–"
        print(f"| {c[0]} | {loader} | {c[2]} | {med(runs, 'marks', 'index'):.2f} | {decoded} | {med(runs, 'marks', 'stats'):.1f} | "
              f"{med(runs, 'marks', 'batch1'):.1f} | {med(runs, 'step1'):.1f} | {med(runs, 'wall'):.1f} | {med(runs, 'main_rss'):.0f} | "
              f"{med(runs, 'tree_rss'):.0f} | {med(runs, 'tree_pss'):.0f} | "
              f"{fmt([r.get('step1', float('nan')) for r in runs])} |")  # fmt: skip
    print(flush=True)


# ----------------------------------------------------------------------------- 2. decode + crop


class TwoCrops:
    """Applies a transform twice (the usual two-view wrapper of SimCLR-style pipelines)."""

    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, image):
        return [self.transform(image), self.transform(image)]


def decode_pipelines(train: Path, count: int) -> dict[str, callable]:
    """name -> a function(workers) returning a DataLoader over the same `count` files."""
    import torch
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets
    from torchvision.transforms import v2

    from hybridssl.data.index import file_index
    from hybridssl.data.streaming import CropDataset, collate_crops
    from hybridssl.data.views import Crop

    index = file_index(train).take(count, seed=0)
    keys = [[(0, i) for i in range(j, min(j + 32, len(index)))] for j in range(0, len(index), 32)]

    def ours(crops):
        dataset = CropDataset(index, crops, 3, seed=0)
        return lambda workers: DataLoader(
            dataset, batch_sampler=keys, num_workers=workers, collate_fn=collate_crops
        )

    folder = datasets.ImageFolder(str(train))
    position = {os.path.abspath(p): k for k, (p, _) in enumerate(folder.samples)}
    rows = [position[os.path.abspath(index.path(i))] for i in range(len(index))]
    assert len(rows) == len(index)

    def baseline(scale, interpolation, views):
        crop = v2.Compose([v2.RandomResizedCrop(224, scale=scale, antialias=True, interpolation=interpolation),
                           v2.RandomHorizontalFlip(), v2.ToImage(), v2.ToDtype(torch.uint8)])  # fmt: skip
        dataset = Subset(
            datasets.ImageFolder(str(train), transform=TwoCrops(crop) if views == 2 else crop), rows
        )
        return lambda workers: DataLoader(dataset, batch_size=32, num_workers=workers)

    bilinear, bicubic = v2.InterpolationMode.BILINEAR, v2.InterpolationMode.BICUBIC
    return {
        "hybridssl CropDataset, MAE: 1 crop (0.2-1), bicubic": ours([Crop(224, (0.2, 1.0))]),
        "ImageFolder + v2, 1 crop (0.2-1), bilinear (default)": baseline((0.2, 1.0), bilinear, 1),
        "ImageFolder + v2, 1 crop (0.2-1), bicubic": baseline((0.2, 1.0), bicubic, 1),
        "hybridssl CropDataset, SimCLR: 2 crops (0.08-1), bicubic": ours([Crop(224, (0.08, 1.0))] * 2),
        "ImageFolder + v2, 2 crops (0.08-1), bilinear (default)": baseline((0.08, 1.0), bilinear, 2),
    }


def timed_read(make_loader, workers: int, count: int) -> tuple[float, float]:
    """(seconds to the first batch: worker start + first reads, images/s over the batches after it)."""
    start = time.perf_counter()
    seen, after = 0, None
    for batch in make_loader(workers):
        crops = batch["crops"][0] if isinstance(batch, dict) else batch[0]
        seen += len(crops[0] if isinstance(crops, list) else crops)
        if after is None:
            first, after, seen = time.perf_counter() - start, time.perf_counter(), 0
    assert seen == count - 32, (seen, count)
    return first, seen / (time.perf_counter() - after)


def section_decode(args, folder: Path, work: Path, device: str) -> None:
    os.environ["HYBRIDSSL_INDEX_DIR"] = str(work / "index-shared")
    pipelines = decode_pipelines(folder / "train", args.decode_images)
    configs = [(name, w) for w in (1, 2) for name in pipelines]
    samples: dict[tuple, list[float]] = {c: [] for c in configs}
    firsts: dict[tuple, list[float]] = {c: [] for c in configs}
    for r in range(args.rounds):
        for c in configs:
            first, rate = timed_read(pipelines[c[0]], c[1], args.decode_images)
            samples[c].append(rate)
            firsts[c].append(first)
        log(f"decode round {r}: " + ", ".join(f"{c[1]}w {v[-1]:.0f}" for c, v in samples.items()))
    print(header("data_loading.py", device))
    print(f"| pipeline ({args.decode_images} files of {folder.name}/train, 300-500 px JPEGs -> uint8 224 crops, batch 32; "
          f"img/s over the {args.decode_images - 32} after the first batch) | workers | img/s (median) | img/s per worker | "
          "ms per image per worker | rounds (img/s) | first batch (s) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for c in configs:
        med = statistics.median(samples[c])
        print(f"| {c[0]} | {c[1]} | {med:.0f} | {med / c[1]:.0f} | {1000 * c[1] / med:.1f} | {fmt(samples[c], 0)} | "
              f"{statistics.median(firsts[c]):.2f} |")  # fmt: skip
    print(flush=True)


# ----------------------------------------------------------------------------- 3. data wait


def section_wait(args, folder: Path, work: Path, device: str) -> None:
    configs = [1, 2]
    samples: dict[int, list[dict]] = {w: [] for w in configs}
    out = work / "run"
    for r in range(args.rounds_train):
        for w in configs:
            shutil.rmtree(out, ignore_errors=True)
            pretrain(
                pretrain_args(folder, out, steps=args.wait_steps, workers=w), work, work / "index-shared"
            )
            steps = steady_steps(out / "logs" / "csv" / "metrics.csv", args.drop, 32)
            shutil.rmtree(out, ignore_errors=True)
            seconds, waits = sum(x["seconds"] for x in steps), sum(x["wait"] for x in steps)
            samples[w].append({"steps": len(steps), "step_s": statistics.median(x["seconds"] for x in steps),
                               "img_s": 32 * len(steps) / seconds, "wait": 100 * waits / seconds,
                               "max_wait": max(x["share"] for x in steps), "logged": steps[-1]["logged_share"]})  # fmt: skip
            log(f"wait {w} workers round {r}: {samples[w][-1]}")
    print(header("data_loading.py", device))
    print(f"| MAE vit-small/16, 224 px, batch 32, --loader stream ({folder.name}) | steady steps per run | step (s, median) | "
          "img/s | data wait (% of step time) | worst step's wait % | logged wait% (EMA) at the last step | rounds: data wait % |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for w in configs:
        runs = samples[w]
        print(f"| {w} worker{'s' if w > 1 else ''} | {runs[0]['steps']} (steps {args.drop}-{args.wait_steps - 1}) | "
              f"{med(runs, 'step_s'):.2f} | {med(runs, 'img_s'):.1f} | {med(runs, 'wait'):.1f} | {max(x['max_wait'] for x in runs):.1f} | "
              f"{med(runs, 'logged'):.1f} | {fmt([x['wait'] for x in runs])} |")  # fmt: skip
    print(flush=True)


# ----------------------------------------------------------------------------- 4. DDP


def section_ddp(args, folder: Path, work: Path, device: str) -> None:
    configs = ["own part (default)", "global batch (global_batch_views=true)"]
    samples: dict[str, list[dict]] = {c: [] for c in configs}
    out = work / "run"
    for r in range(args.rounds_train):
        for c in configs:
            shutil.rmtree(out, ignore_errors=True)
            extra = (
                "--devices",
                "2",
                "--accelerator",
                "cpu",
                *(("--set", "global_batch_views=true") if "global" in c else ()),
            )
            cli_args = pretrain_args(
                folder,
                out,
                method="simclr",
                model="vit-pico",
                batch=16,
                steps=args.ddp_steps,
                workers=1,
                extra=extra,
            )
            result = pretrain(cli_args, work, work / "index-shared", drop=args.drop)
            steps = steady_steps(out / "logs" / "csv" / "metrics.csv", args.drop, 32)
            shutil.rmtree(out, ignore_errors=True)
            seconds = sum(x["seconds"] for x in steps)
            samples[c].append({"step_s": statistics.median(x["seconds"] for x in steps), "img_s": 32 * len(steps) / seconds,
                               "wait": 100 * sum(x["wait"] for x in steps) / seconds, "ranks": result["ranks"], "steps": len(steps)})  # fmt: skip
            log(f"ddp {c} round {r}: {samples[c][-1]}")
    print(header("data_loading.py", device))
    print("| 2 ranks (gloo), SimCLR vit-pico/16, 224 px, batch 16 per rank, 1 worker per rank | images decoded + cropped per rank per step | "
          "decode per rank (ms/step) | crop + flip per rank (ms/step) | device-side finish per rank (ms/step) | "
          "augmentation per rank (crop + finish, ms/step) | step wall (s, median) | img/s (global) | data wait % (rank 0) | rounds: step (s) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c in configs:
        runs = samples[c]
        per_rank = [rank for run in runs for rank in run["ranks"].values()]
        images = per_rank[0]["images"]
        decode = statistics.median(1000 * images * (x["sample"] - x["crop"]) for x in per_rank)
        crop = statistics.median(1000 * images * x["crop"] for x in per_rank)
        finish = statistics.median(1000 * x["finish"] for x in per_rank)
        print(f"| {c} | {images} | {decode:.0f} | {crop:.0f} | {finish:.0f} | {crop + finish:.0f} | {med(runs, 'step_s'):.2f} | "
              f"{med(runs, 'img_s'):.1f} | {med(runs, 'wait'):.1f} | {fmt([x['step_s'] for x in runs], 2)} |")  # fmt: skip
    print(flush=True)


# ----------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,100000", help="images per generated folder (train + val)")
    p.add_argument(
        "--root", type=Path, default=Path("/tmp/hybridssl-bench-photos"), help="where the folders are cached"
    )
    p.add_argument(
        "--work",
        type=Path,
        default=None,
        help="scratch folder for runs and indexes (default: a temporary one)",
    )
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"any of {', '.join(SECTIONS)}")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the decode comparison")
    p.add_argument("--rounds-startup", type=int, default=3, help="rounds of the start-up runs (stream)")
    p.add_argument("--rounds-train", type=int, default=2, help="rounds of the wait and DDP runs")
    p.add_argument(
        "--decode-images",
        type=int,
        default=1056,
        help="files per decode round (the first batch of 32 is timed apart)",
    )
    p.add_argument("--wait-steps", type=int, default=12)
    p.add_argument("--ddp-steps", type=int, default=12)
    p.add_argument("--drop", type=int, default=2, help="first steps left out of the wait and DDP figures")
    p.add_argument("--no-memory", action="store_true", help="skip the --loader memory run")
    p.add_argument("--quick", action="store_true", help="tiny sizes, few steps, one round: checks the script")
    args = p.parse_args()
    if args.quick:
        if args.sizes == p.get_default("sizes"):
            args.sizes = "400,1600"
        args.rounds = args.rounds_startup = args.rounds_train = 1
        args.decode_images, args.wait_steps, args.ddp_steps, args.drop = 160, 4, 4, 1
    sections = args.sections.split(",")
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    sizes = sorted(int(s) for s in args.sizes.split(","))
    device = f"cpu, {cpu_name()}"
    args.root.mkdir(parents=True, exist_ok=True)
    folders = {
        n: ensure_folder(args.root, n) for n in reversed(sizes)
    }  # largest first: smaller ones link to it
    folders = dict(sorted(folders.items()))
    smallest = folders[min(folders)]
    work = args.work or Path(tempfile.mkdtemp(prefix="hybridssl-bench-data-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        if "startup" in sections:
            section_startup(args, folders, work, device)
        if "decode" in sections:
            section_decode(args, smallest, work, device)
        if "wait" in sections:
            section_wait(args, smallest, work, device)
        if "ddp" in sections:
            section_ddp(args, smallest, work, device)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    log(f"done in {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
