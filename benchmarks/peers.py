"""Our MAE step against a peer implementation (lightly's MAE modules) on the same configuration.

The peer lives in its own virtualenv (default ~/.cache/hybridssl/peer-venv, created on first use with
torch 2.14.1 / torchvision 0.29.1 / lightly / timm); it is never a dependency of hybridssl. Rounds
alternate ours and the peer so machine noise hits both alike; the median ratio is reported. Each side
runs as a user gets it: ours through the CLI, which preloads tcmalloc when installed; the peer with
the default allocator.

    python benchmarks/peers.py --model vit-tiny --batch-size 256 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from throughput import header, run_bench  # benchmarks/ is on sys.path when this script runs

HERE = Path(__file__).resolve().parent
CONFIG_KEYS = ["img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "decoder_dim",
               "decoder_depth", "decoder_heads", "mask_ratio", "batch_size"]  # fmt: skip


def peer_python(venv: Path) -> Path:
    python = venv / "bin" / "python"
    ok = python.exists() and subprocess.run([python, "-c", "import lightly, timm"], capture_output=True).returncode == 0
    if not ok:
        print(f"installing the peer (lightly) into {venv} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "torch==2.14.1", "torchvision==0.29.1"], check=True)
        subprocess.run([*pip, "lightly", "timm"], check=True)
    return python


def peer(python: Path, config: dict) -> dict:
    out = subprocess.run([str(python), str(HERE / "peer_steps" / "lightly_mae.py"), json.dumps(config)],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="vit-tiny")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--venv", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hybridssl" / "peer-venv")
    args = p.parse_args()
    python = peer_python(args.venv)
    rows = []
    for _ in range(args.rounds):
        mine = run_bench("mae", args.model, args.batch_size, args.steps, tcmalloc=True, extra=[])
        config = {k: mine[k] for k in CONFIG_KEYS} | {"steps": args.steps}
        theirs = peer(python, config)
        rows.append((mine["images_per_second"], theirs["images_per_second"], mine))
    ratios = [a / b for a, b, _ in rows]
    mine = rows[-1][2]
    print(header("peers.py", mine["device"]))
    print("| config | hybridssl img/s | lightly img/s | ratio (median) | rounds | hybridssl FLOP/s vs matmul peak |")
    print("|---|---|---|---|---|---|")
    cfg = f"MAE {args.model} ({mine['embed_dim']}/{mine['depth']}/{mine['num_heads']}, dec {mine['decoder_dim']}x{mine['decoder_depth']}), batch {args.batch_size}, mask {mine['mask_ratio']}"
    print(f"| {cfg} | {statistics.median(a for a, _, _ in rows):.0f} | {statistics.median(b for _, b, _ in rows):.0f} | "
          f"{statistics.median(ratios):.2f} | {', '.join(f'{r:.2f}' for r in ratios)} | "
          f"{100 * mine['flops_utilization']:.0f}% of {mine['matmul_peak_flops'] / 1e9:.0f} GFLOP/s |")  # fmt: skip


if __name__ == "__main__":
    main()
