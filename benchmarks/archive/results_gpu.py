"""The results table of BENCHMARKS.md ("Results at real budgets") on one GPU, in one command.

    python benchmarks/archive/results_gpu.py OUT [--minutes 4] [--max-epochs 100] [--finetune-epochs 15] [--toy]

Every method's row of benchmarks/archive/results_row.sh (its small-image recipe, all 60k Fashion-MNIST images,
then the protocols), the MAE-CT row on the MAE row, the floors (benchmarks/archive/floors.sh), the fine-tune
column (benchmarks/archive/flagship_finetune.sh) and OUT/table.md + OUT/results.png (benchmarks/archive/flagship_table.py).
vit-pico at 28 px leaves a GPU idle most of each step (kernel launches, not arithmetic, bound it), so the
rows run side by side, one process each, sharing the CPU cores. Every row gets the same number of epochs,
chosen on the machine itself: `hybridssl bench` times each method's step at its recipe's batch, all at
once, and the epochs are the most (up to --max-epochs) that fit the slowest row, the MAE row with its
MAE-CT stages after it, into --minutes of pretraining. OUT/plan.json keeps the measurement and the choice;
OUT/log.txt the stages' times. Rerun with the same OUT to continue (the rows resume; the plan is kept).

On the `device` tool's machine (a bare Python without kornia and pydantic, no network), build the bundle
here first (`sh benchmarks/archive/device_bundle.sh`), carry `.device-bundle` and start the command with
`. benchmarks/archive/device_env.sh &&`. --toy: the same steps at toy size on the CPU (tests/test_results_gpu.py),
so the script cannot rot between GPU sessions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROWS = ("mae", "cmae", "can", "macrl", "simclr", "mocov3", "nnclr")
MAE_CT_EPOCHS = 1 + 8  # results_row.sh's defaults for the mae-ct row: HEAD_EPOCHS + TUNE_EPOCHS
TRAIN_IMAGES = 60_000
OVERHEAD = 1.3  # an epoch over its bench steps (data, logging, checkpoints): a guess until a GPU run measures it
TOY = {  # --toy: sizes that run on 2 CPU cores in minutes
    "images": 256,
    "pretrain": "--limit-train 256 --batch-size 32 --accelerator cpu",
    "eval": "--limit-train 256 --limit-test 128 --epochs 1",
    "bench": ["--batch-size", "8", "--steps", "1", "--warmup", "1", "--device", "cpu"],
}
GPU_BENCH = ["--steps", "20", "--warmup", "10", "--device", "cuda"]


def stamp(out: Path, what: str) -> None:
    line = f"[{datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}] {what}"
    print(line, flush=True)
    with (out / "log.txt").open("a") as log:
        log.write(line + "\n")


def hybridssl() -> list[str]:
    return shlex.split(os.environ.get("HYBRIDSSL") or f"{sys.executable} -m hybridssl")


def recipe_batch(method: str) -> int:
    return int(yaml.safe_load((HERE.parent.parent / "configs" / method / "fashion-mnist.yaml").read_text())["batch_size"])


def child_env(processes: int, **extra: str) -> dict[str, str]:
    """The environment of one of `processes` side-by-side children: an equal share of the CPU threads."""
    threads = max(1, (os.cpu_count() or 1) // processes)
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "HYBRIDSSL": shlex.join(hybridssl()), **extra}  # fmt: skip


def measure_steps(methods: dict[str, str], toy: bool) -> dict[str, float]:
    """Images per second of each bench stage (method -> stage name), all timed at once as the rows will run."""
    procs = {}
    for method, stage in methods.items():
        flags = TOY["bench"] if toy else ["--batch-size", str(recipe_batch(method)), *GPU_BENCH]
        cmd = [*hybridssl(), "bench", "--method", stage, "--dataset", "fashion-mnist", "--model", "vit-pico", *flags, "--json"]
        procs[method] = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=child_env(len(methods)))
    rates = {}
    for method, proc in procs.items():
        stdout, _ = proc.communicate()
        if proc.returncode != 0:
            for other in procs.values():
                other.kill()
            raise SystemExit(f"bench of {method} failed (exit {proc.returncode})")
        rates[method] = float(json.loads(stdout.strip().splitlines()[-1])["images_per_second"])
    return rates


def choose_epochs(rates: dict[str, float], minutes: float, max_epochs: int, images: int) -> int:
    """The most epochs, at most max_epochs and at least 1, that fit every row into `minutes`; the MAE row
    also holds the MAE-CT stages that start from it."""
    epoch_seconds = {m: images / rate * OVERHEAD for m, rate in rates.items()}
    budgets = {m: minutes * 60 - (MAE_CT_EPOCHS * epoch_seconds["mae-ct"] if m == "mae" else 0) for m in rates if m != "mae-ct"}
    fits = min(math.floor(budgets[m] / epoch_seconds[m]) for m in budgets)
    return max(1, min(max_epochs, fits))


def plan(out: Path, rows: list[str], args: argparse.Namespace) -> dict:
    path = out / "plan.json"
    if path.is_file():  # a rerun continues the rows with the epochs they started with
        kept = json.loads(path.read_text())
        if kept["rows"] != rows or kept.get("toy", False) != args.toy:
            raise SystemExit(f"{path} was planned for rows {kept['rows']} (toy: {kept.get('toy', False)}): rerun with those, or use another OUT")
        return kept
    stamp(out, "bench")
    rates = measure_steps({**{m: m for m in rows}, **({"mae-ct": "mae-ct-tune"} if "mae" in rows else {})}, args.toy)
    images = TOY["images"] if args.toy else TRAIN_IMAGES
    chosen = {"epochs": 1 if args.toy else choose_epochs(rates, args.minutes, args.max_epochs, images),
              "images_per_second": rates, "minutes": args.minutes, "max_epochs": args.max_epochs, "rows": rows, "toy": args.toy}  # fmt: skip
    path.write_text(json.dumps(chosen, indent=1))
    return chosen


def launch(out: Path, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    (out / "logs").mkdir(exist_ok=True)
    with (out / "logs" / f"{name}.log").open("a") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)  # a group: stop() reaches the children


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the job's whole process group (the shell script and the hybridssl it runs)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def run_jobs(out: Path, rows: list[str], epochs: str, finetune_epochs: int, env: dict[str, str], deadline: float) -> dict[str, int]:
    """Every job side by side, each started as soon as what it needs is done: the rows at once; mae-ct,
    the floors and the random-init fine-tune after the MAE row; a row's fine-tune after the row. At the
    deadline (time.monotonic) the jobs still running are stopped (exit code -15; a rerun continues them).
    Logs in OUT/logs/NAME.log; returns each job's exit code."""
    row, finetune = str(HERE / "results_row.sh"), str(HERE / "flagship_finetune.sh")
    mae = str(out / "rows" / "mae" / "checkpoints" / "last.ckpt")

    def finetune_job(name: str) -> dict[str, list[str]]:  # its own LOG: the stamps of parallel jobs stay apart
        log = f"LOG={out / 'logs' / f'finetune-{name}.stamps'}"
        return {f"finetune-{name}": ["env", log, "sh", finetune, str(out), str(finetune_epochs), name]} if finetune_epochs > 0 else {}

    def after(name: str) -> dict[str, list[str]]:
        jobs = finetune_job(name) if name in (*ROWS, "mae-ct") else {}
        if name == "mae":
            jobs |= {"mae-ct": ["sh", row, "mae-ct", str(out)], "floors": ["sh", str(HERE / "floors.sh"), str(out), mae]}
            jobs |= finetune_job("random-init")
        return jobs

    running = {m: launch(out, m, ["sh", row, m, str(out), epochs], env) for m in rows}
    codes: dict[str, int] = {}
    try:
        while running:
            time.sleep(1)
            if time.monotonic() > deadline:
                stamp(out, f"deadline: stopping {', '.join(running)}")
                break
            for name in [n for n, proc in running.items() if proc.poll() is not None]:
                codes[name] = running.pop(name).returncode
                stamp(out, f"{name} {'done' if codes[name] == 0 else f'FAILED (exit {codes[name]})'}")
                if codes[name] == 0:
                    running |= {job: launch(out, job, cmd, env) for job, cmd in after(name).items()}
    finally:  # the deadline, an interrupt or an error: no job runs on unwatched (their own sessions miss Ctrl-C)
        for proc in running.values():
            stop(proc)
        codes |= {name: proc.wait() for name, proc in running.items()}
    return codes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--minutes", type=float, default=4.0, help="pretraining time the epochs are fitted to (default 4)")
    parser.add_argument("--max-epochs", type=int, default=100)
    parser.add_argument("--finetune-epochs", type=int, default=15, help="0: no fine-tune column")
    parser.add_argument("--deadline", type=float, default=9.0,
                        help="minutes after which running jobs are stopped and the table of what finished is written (default 9)")
    parser.add_argument("--rows", default=",".join(ROWS),
                        help=f"comma list of rows (default {','.join(ROWS)}); mae brings mae-ct and the floors, which start from it")
    parser.add_argument("--toy", action="store_true", help="toy sizes on the CPU, to check the script")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    deadline = time.monotonic() + args.deadline * 60
    stamp(out, "session start")  # flagship_table.py's stage times: a stage cut by a kill has no end
    rows = [r for r in args.rows.split(",") if r]
    if unknown := sorted(set(rows) - set(ROWS)):
        parser.error(f"--rows: unknown {unknown}; choose from {', '.join(ROWS)}")
    chosen = plan(out, rows, args)
    epochs = str(chosen["epochs"])
    stamp(out, f"rows at {epochs} epochs: {', '.join(rows)}" + ("; then mae-ct" if "mae" in rows else ""))
    flags = {"PRETRAIN_FLAGS": TOY["pretrain"], "EVAL_FLAGS": TOY["eval"], "TUNE_EPOCHS": "1"} if args.toy else {}
    env = child_env(len(rows) + 2, **flags)  # + mae-ct and the floors beside the rows
    codes: dict[str, int] = {}
    try:
        codes = run_jobs(out, rows, epochs, args.finetune_epochs, env, deadline)
    finally:  # the table of whatever finished, also after an interrupt
        table = write_table(out, env)
    failed = {name: code for name, code in codes.items() if code}
    stamp(out, f"done in {(time.perf_counter() - start) / 60:.1f} min" + (f"; failed or stopped: {failed} (logs in {out / 'logs'})" if failed else ""))
    return 1 if failed or table.returncode else 0


def write_table(out: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    table = subprocess.run([sys.executable, str(HERE / "flagship_table.py"), str(out), "--figure", str(out / "results.png")],
                           capture_output=True, text=True, env=env)  # fmt: skip
    (out / "table.md").write_text(table.stdout)
    print(table.stdout, table.stderr[-2000:], sep="\n")
    return table


if __name__ == "__main__":
    raise SystemExit(main())
