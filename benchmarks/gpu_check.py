"""Helper of `benchmarks/gpu_check.sh`: machine facts, the photo folder, the per-method bench rows and
the final gpu_check.json + gpu_check.md. Each subcommand is one step of the shell script:

    gpu_check.py info    --device cuda --out OUT/info.json        versions, machine, measured matmul peak
    gpu_check.py photos  --root DIR --num-images N --sizes 300,500 --jobs J
    gpu_check.py bench   --methods mae,simclr --device cuda --peak-from OUT/info.json --jsonl OUT/bench.jsonl ...
    gpu_check.py report  --out OUT --methods ... --set key=value ...

`bench` calls `hybridssl.engine.bench.bench`, the function behind `hybridssl bench`, because the CLI
has no --image-size (it takes the size from a named dataset: 28, 32 or 96 px) and always measures the
matmul peak again (9 s per method on a 2-core CPU). Here the peak is measured once, in `info`, and every
row's MFU is its achieved FLOP/s over that one number. A method that raises gets a row with `error`;
the next method still runs.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- info


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], check=False, cwd=REPO, capture_output=True, text=True, timeout=20).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def nvidia_smi() -> list[dict[str, str]] | None:
    if shutil.which("nvidia-smi") is None:
        return None
    fields = "name,driver_version,memory.total,power.limit,clocks.max.sm"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                             check=False, capture_output=True, text=True, timeout=30).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    keys = fields.split(",")
    return [dict(zip(keys, (v.strip() for v in line.split(",")))) for line in out.splitlines() if line.strip()]


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def quick_peak(device, dtype, sizes=(256, 512), seconds: float = 0.3) -> float:
    """Toy mode: the same measurement as hybridssl's matmul_peak on small matrices (its 4096 x 4096
    warm-up alone takes seconds on a small CPU)."""
    import torch

    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        start, count = time.perf_counter(), 0
        while time.perf_counter() - start < seconds / len(sizes):
            a @ b
            count += 1
        best = max(best, 2 * n**3 * count / (time.perf_counter() - start))
    return best


def benchable_methods() -> list[str]:
    """Every registered single-stage method, in registration order. Multi-stage recipes (mae-ct,
    mae-ct-aug) cannot be benched as one step; their stages (mae-ct-head, mae-ct-tune) are methods."""
    from hybridssl.methods import METHODS
    from hybridssl.methods.base import Method

    return [name for name, cls in METHODS.items() if isinstance(cls, type) and issubclass(cls, Method)]


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        print("gpu_check: no CUDA device visible to torch (torch.cuda.is_available() is False); "
              "run with GPU_CHECK_TOY=1 for the CPU toy check", file=sys.stderr)  # fmt: skip
        return 3
    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cuda_available": cuda,
        "gpus": [
            {
                "name": torch.cuda.get_device_name(i),
                "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
                "memory_gb": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
            }
            for i in range(torch.cuda.device_count() if cuda else 0)
        ],
        "nvidia_smi": nvidia_smi(),
        "packages": {name: package_version(name) for name in ("hybridssl", "torchvision", "lightning", "timm", "kornia", "numpy", "pillow")},
        "git": git_commit(),
    }
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    start = time.perf_counter()
    if args.toy:
        peak, how = quick_peak(device, dtype), "toy: square matmuls 256-512"
    else:
        from hybridssl.engine.bench import matmul_peak

        peak, how = matmul_peak(device, dtype), "hybridssl.engine.bench.matmul_peak: square matmuls 1024-4096"
    info["matmul_peak"] = {"flops": peak, "dtype": str(dtype).removeprefix("torch."), "device": args.device, "method": how,
                           "seconds": round(time.perf_counter() - start, 2)}  # fmt: skip
    info["methods"] = benchable_methods()
    Path(args.out).write_text(json.dumps(info, indent=2) + "\n")
    if args.methods_out:
        Path(args.methods_out).write_text(",".join(info["methods"]) + "\n")
    gpu = ", ".join(f"{g['name']} ({g['memory_gb']} GiB, sm {g['capability']})" for g in info["gpus"]) or "none"
    print(f"python {info['python']}, torch {info['torch']} (CUDA {info['torch_cuda']}, cuDNN {info['cudnn']}), "
          f"hybridssl {info['packages']['hybridssl']} at {info['git']['commit']}{' (dirty)' if info['git']['dirty'] else ''}")  # fmt: skip
    print(f"cpu: {info['cpu']} x {info['cpu_count']} ({info['cpus_usable']} usable); gpu: {gpu}")
    print(f"measured matmul peak ({info['matmul_peak']['dtype']}, {args.device}): {peak / 1e12:.3g} TFLOP/s")
    return 0


# ----------------------------------------------------------------------------- photos


def _write_part(job: tuple[str, int, int, int, int]) -> None:
    from hybridssl.data.synthetic import write_photo_folder

    root, n, seed, lo, hi = job
    write_photo_folder(root, n, num_classes=4, layout="train_val", sizes=(lo, hi), seed=seed)


def cmd_photos(args: argparse.Namespace) -> int:
    """A train/ + val/ JPEG folder of `num_images` photos, written by `jobs` processes (one seeded part
    each, merged under unique names). Kept when a folder of that many images is already there."""
    root = Path(args.root)
    lo, hi = (int(v) for v in args.sizes.split(","))
    marker = root / ".gpu_check"
    expected = f"{args.num_images} {lo} {hi}"
    if marker.exists() and marker.read_text().strip() == expected:
        print(f"photo folder {root}: {args.num_images} images already there")
        return 0
    shutil.rmtree(root, ignore_errors=True)
    parts_dir = root / ".parts"
    jobs = max(1, min(args.jobs, args.num_images))
    counts = [args.num_images // jobs + (i < args.num_images % jobs) for i in range(jobs)]
    work = [(str(parts_dir / f"p{i}"), n, 1000 + i, lo, hi) for i, n in enumerate(counts) if n]
    start = time.perf_counter()
    if len(work) == 1:
        _write_part(work[0])
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(len(work)) as pool:
            pool.map(_write_part, work)
    for i, (part, *_rest) in enumerate(work):
        for image in Path(part).rglob("*.jpg"):
            target = root / image.parent.relative_to(part) / f"p{i}-{image.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            image.rename(target)
    shutil.rmtree(parts_dir)
    train = sum(1 for _ in (root / "train").rglob("*.jpg"))
    marker.write_text(expected + "\n")
    print(f"photo folder {root}: {args.num_images} JPEGs ({train} train), {lo}-{hi} px, "
          f"{jobs} processes, {time.perf_counter() - start:.1f} s")  # fmt: skip
    return 0


# ----------------------------------------------------------------------------- bench


def parse_sets(values: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in values:
        key, _, raw = item.partition("=")
        out[key.strip()] = yaml.safe_load(raw)
    return out


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from hybridssl.engine.bench import bench

    peak = json.loads(Path(args.peak_from).read_text())["matmul_peak"]["flops"] if args.peak_from else None
    method_args = {k.removeprefix("method_args."): v for k, v in parse_sets(args.set).items()}
    out = Path(args.jsonl)
    for method in args.methods.split(","):
        flags = {"method": method, "model": args.model, "batch_size": args.batch_size, "patch_size": args.patch_size}
        if method_args:
            flags["method_args"] = method_args
        print(f"bench {method}: {args.model}/{args.patch_size}, {args.image_size} px, batch {args.batch_size}, "
              f"{args.warmup} + {args.steps} steps on {args.device}", flush=True)  # fmt: skip
        start = time.perf_counter()
        try:
            row = bench(flags, steps=args.steps, warmup=args.warmup, dataset="folder", image_size=args.image_size,
                        channels=3, device=args.device, peak=False)  # fmt: skip
            row["matmul_peak_flops"] = peak
            row["flops_utilization"] = row["achieved_flops"] / peak if peak else None
            print(f"  {row['images_per_second']:.1f} img/s, {1000 * row['seconds_per_step']:.1f} ms/step, "
                  f"MFU {100 * (row['flops_utilization'] or 0):.1f}%, peak memory {row['peak_memory_mb']:.0f} MB", flush=True)  # fmt: skip
        except Exception as exc:  # noqa: BLE001  (one method's failure is recorded; the next still runs)
            traceback.print_exc()
            row = {"method": method, "model": args.model, "batch_size": args.batch_size,
                   "error": f"{type(exc).__name__}: {exc}".strip()[:1000]}  # fmt: skip
            print(f"  FAILED: {row['error'].splitlines()[0]}", flush=True)
        row["wall_seconds"] = round(time.perf_counter() - start, 1)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return 0


# ----------------------------------------------------------------------------- report


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


def tail(path: Path, lines: int = 5) -> str | None:
    if not path.exists():
        return None
    return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:]) or None


def streaming_row(run_dir: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Steady state of the streaming MAE run: medians over the second half of the logged steps of the
    trainer's `img/s` and `wait%` (both smoothed by its Throughput callback)."""
    row: dict[str, Any] = {key.removeprefix("train_"): settings.get(key) for key in
                           ("train_model", "train_patch_size", "train_image_size", "train_batch_size", "train_steps",
                            "train_workers", "train_images", "train_wall_seconds")}  # fmt: skip
    row["method"] = "mae"
    row["loader"] = "stream"
    row["exit_code"] = settings.get("train_exit_code")
    metrics = run_dir / "logs" / "csv" / "metrics.csv"
    if not metrics.exists():
        row["error"] = f"no {metrics} (exit code {row['exit_code']}): " + (tail(run_dir.parent / "logs" / "mae-stream.log") or "")
        return row
    with metrics.open() as f:
        logged = [r for r in csv.DictReader(f) if r.get("img/s") not in (None, "")]
    if not logged or "wait%" not in logged[0]:
        row["error"] = f"{metrics}: no rows with img/s and wait% (columns: {list(logged[0]) if logged else 'none'})"
        return row
    steady = logged[len(logged) // 2 :]
    row["images_per_second"] = statistics.median(float(r["img/s"]) for r in steady)
    row["data_wait_percent"] = statistics.median(float(r["wait%"]) for r in steady if r.get("wait%") not in (None, ""))
    row["images_per_second_last"] = float(logged[-1]["img/s"])
    row["data_wait_percent_max"] = max(float(r["wait%"]) for r in steady if r.get("wait%") not in (None, ""))
    row["logged_steps"] = len(logged)
    row["steady_steps"] = [int(float(steady[0]["step"])), int(float(steady[-1]["step"]))] if "step" in steady[0] else None
    if row["exit_code"] not in (None, 0):
        row["error"] = f"pretrain exited with {row['exit_code']}"
    return row


def fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(report: dict[str, Any]) -> str:
    info, s = report["machine"], report["settings"]
    gpu = ", ".join(g["name"] for g in info.get("gpus", [])) or f"CPU ({info.get('cpu')})"
    peak = info.get("matmul_peak", {})
    lines = [
        f"# GPU check{' (toy mode, CPU)' if report['toy'] else ''}",
        "",
        (
            f"{report['date']} on {gpu}; torch {info.get('torch')} (CUDA {info.get('torch_cuda')}), "
            f"hybridssl {info.get('packages', {}).get('hybridssl')} at {(info.get('git') or {}).get('commit')}; "
            f"total {report['total_seconds']} s."
        ),
        "",
        f"CUDA tests (`pytest -m cuda`): {report['cuda_tests']['result']}.",
        "",
        (
            f"Bench: `hybridssl.engine.bench.bench` (the step of `hybridssl bench`) on synthetic uint8 images, "
            f"{s.get('image_size')} px, {s.get('warmup')} warm-up + {s.get('steps')} timed steps, "
            f"{'bf16 autocast' if s.get('device') == 'cuda' else 'fp32'}; MFU = counted FLOP/s over the measured "
            f"{peak.get('dtype')} matmul peak, {fmt((peak.get('flops') or 0) / 1e12, '.3g')} TFLOP/s "
            "(attention kernels are not counted, so MFU is a lower bound)."
        ),
        "",
        "| method | model | image | batch | precision | img/s | ms/step | MFU % | peak memory MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["benches"]:
        if "error" in r:
            lines.append(f"| {r['method']} | {r.get('model', '-')} | - | {r.get('batch_size', '-')} | - | "
                         f"error: {r['error'].splitlines()[0][:120].replace('|', '/')} | - | - | - |")  # fmt: skip
            continue
        mfu = r.get("flops_utilization")
        lines.append(
            f"| {r['method']} | {r['model']}/{r['patch_size']} | {r['img_size']} | {r['batch_size']} | {r['precision']} | "
            f"{r['images_per_second']:.1f} | {1000 * r['seconds_per_step']:.1f} | {fmt(None if mfu is None else 100 * mfu, '.1f')} | "
            f"{r['peak_memory_mb']:.0f} |"
        )
    st = report["streaming"]
    lines += [
        "",
        (
            f"Streaming: `hybridssl pretrain --method mae --dataset folder --loader stream` on {st.get('images')} "
            f"generated JPEGs ({s.get('photo_sizes')} px), {st.get('steps')} steps; img/s and data wait % are medians "
            "over the second half of the logged steps (`img/s`, `wait%` in logs/csv/metrics.csv)."
        ),
        "",
        "| run | model | image | batch | workers | img/s | data wait % | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    if "error" in st and st.get("images_per_second") is None:
        lines.append(f"| mae stream | {st.get('model')}/{st.get('patch_size')} | {st.get('image_size')} | {st.get('batch_size')} | "
                     f"{st.get('workers')} | error: {st['error'].splitlines()[0][:120].replace('|', '/')} | - | {st.get('wall_seconds')} |")  # fmt: skip
    else:
        lines.append(f"| mae stream | {st['model']}/{st['patch_size']} | {st['image_size']} | {st['batch_size']} | {st['workers']} | "
                     f"{st['images_per_second']:.1f} | {st['data_wait_percent']:.1f} | {st.get('wall_seconds')} |")  # fmt: skip
    if report["failures"]:
        lines += ["", "Failures: " + "; ".join(report["failures"])]
    return "\n".join(lines) + "\n"


def cmd_report(args: argparse.Namespace) -> int:
    out = Path(args.out)
    settings = parse_sets(args.set)
    info_path = out / "info.json"
    machine = json.loads(info_path.read_text()) if info_path.exists() else {}
    methods = args.methods.split(",")
    rows = {r["method"]: r for r in read_jsonl(out / "bench.jsonl")}
    benches = [rows.get(m) or {"method": m, "model": settings.get("model"), "batch_size": settings.get("batch_size"),
                               "error": f"no result: the bench process died (see {out / 'logs'})"} for m in methods]  # fmt: skip
    rc = settings.get("cuda_tests_exit_code")
    if rc is None:
        result = "skipped (toy mode)" if settings.get("toy") else "skipped"
    else:
        summary = (tail(out / "logs" / "cuda_tests.log", 1) or "").strip("= ")
        result = {0: "passed", 5: "no tests selected"}.get(rc, "FAILED" if rc != 124 else "TIMED OUT") + f" (exit {rc}: {summary})"
    streaming = streaming_row(out / "mae-stream", settings)
    failures = [f"bench {r['method']}: {r['error'].splitlines()[0]}" for r in benches if "error" in r]
    if rc not in (None, 0, 5):
        failures.append(f"CUDA tests exit {rc}")
    if "error" in streaming:
        failures.append(f"streaming run: {streaming['error'].splitlines()[0]}")
    report = {
        "date": machine.get("date") or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "toy": bool(settings.get("toy")),
        "total_seconds": settings.get("total_seconds"),
        "settings": settings,
        "machine": machine,
        "cuda_tests": {"exit_code": rc, "result": result, "log": str(out / "logs" / "cuda_tests.log") if rc is not None else None},
        "benches": benches,
        "streaming": streaming,
        "failures": failures,
    }
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (out / "gpu_check.md").write_text(text)
    print(text)
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    return 1 if failures else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("info")
    q.add_argument("--device", default="cuda")
    q.add_argument("--toy", action="store_true")
    q.add_argument("--out", required=True)
    q.add_argument("--methods-out", help="also write the benchable methods, comma-separated, to this file")
    q = sub.add_parser("photos")
    q.add_argument("--root", required=True)
    q.add_argument("--num-images", type=int, required=True)
    q.add_argument("--sizes", default="300,500")
    q.add_argument("--jobs", type=int, default=1)
    q = sub.add_parser("bench")
    q.add_argument("--methods", required=True)
    q.add_argument("--model", default="vit-base")
    q.add_argument("--patch-size", type=int, default=16)
    q.add_argument("--image-size", type=int, default=224)
    q.add_argument("--batch-size", type=int, default=128)
    q.add_argument("--steps", type=int, default=10)
    q.add_argument("--warmup", type=int, default=3)
    q.add_argument("--device", default="cuda")
    q.add_argument("--peak-from", help="info.json with the measured matmul peak")
    q.add_argument("--set", action="append", default=[], metavar="method_args.KEY=VALUE")
    q.add_argument("--jsonl", required=True)
    q = sub.add_parser("report")
    q.add_argument("--out", required=True)
    q.add_argument("--methods", required=True)
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    return {"info": cmd_info, "photos": cmd_photos, "bench": cmd_bench, "report": cmd_report}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
