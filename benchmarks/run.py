"""`make bench`: the throughput tables of BENCHMARKS.md, printed and saved to runs/bench/.

Runs (each side by side, medians of rounds): MAE on vit-pico / vit-tiny at batch 256, every method on
vit-pico, tcmalloc on/off, the operator profile of the MAE step, and the peer comparison with lightly (skipped with --no-peer, or when the
peer environment cannot be installed). The accuracy tables are produced by `hybridssl compare` and
`hybridssl evaluate`; their commands are written next to them in BENCHMARKS.md, and
`benchmarks/profile_step.py` prints the operator profile quoted there.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
METHODS = "mae,simclr,mocov3,nnclr,mae-ct-head,mae-ct-tune,cmae,can,macrl"


def section(title: str, args: list[str]) -> str:
    print(f"\n## {title}\n", flush=True)
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    text = result.stdout if result.returncode == 0 else f"(failed: {result.stderr.strip().splitlines()[-1:]})\n"
    print(text, flush=True)
    return f"## {title}\n\n{text}\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--output", type=Path, default=Path("runs/bench/throughput.md"))
    args = p.parse_args()
    rounds = ["--rounds", str(args.rounds)]
    throughput = str(HERE / "throughput.py")
    parts = [
        section("MAE, batch 256", [throughput, "--methods", "mae", "--models", "vit-pico,vit-tiny", *rounds]),
        section("Every method, vit-pico, batch 256", [throughput, "--methods", METHODS, "--models", "vit-pico", "--rounds", "2", "--steps", "5"]),
        section("tcmalloc on / off", [throughput, "--methods", "mae,simclr", "--models", "vit-pico", "--tcmalloc", "both", "--rounds", "2", "--steps", "5"]),
    ]
    parts.append(section("Profile: MAE step, vit-tiny, batch 128", [str(HERE / "profile_step.py"), "--method", "mae", "--model", "vit-tiny", "--batch-size", "128"]))
    if not args.no_peer:
        parts.append(section("MAE step: hybridssl vs lightly", [str(HERE / "peers.py"), "--model", "vit-tiny", "--batch-size", "256", *rounds]))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("".join(parts))
    print(f"saved to {args.output}")


if __name__ == "__main__":
    main()
