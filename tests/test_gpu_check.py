"""benchmarks/gpu_check.sh in toy mode (GPU_CHECK_TOY=1: vit-pico, 32 px, CPU, no CUDA tests), so the
GPU check cannot rot between the runs on a CUDA machine: every method gets a bench row, the streaming
MAE run reports img/s and data wait, and the JSON + markdown report is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def benchable_methods() -> set[str]:
    """The library's single-stage methods (test-only methods registered by conftest excluded)."""
    from hybridssl.methods import METHODS
    from hybridssl.methods.base import Method

    return {name for name, cls in METHODS.items()
            if isinstance(cls, type) and issubclass(cls, Method) and cls.__module__.startswith("hybridssl.")}  # fmt: skip


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("gpu-check")
    env = {**os.environ, "GPU_CHECK_TOY": "1", "PYTHON": sys.executable}
    for key in [k for k in env if k.startswith("GPU_CHECK_") and k != "GPU_CHECK_TOY"]:
        del env[key]  # the toy sizes, not whatever the caller's shell has set
    result = subprocess.run(["sh", str(SCRIPT), str(out)], check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    return out, result


def test_toy_run_succeeds(toy_run) -> None:
    _, result = toy_run
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    for step in ("(a)", "(b)", "(c)", "(d)", "(e)"):
        assert f"] {step} " in result.stdout


def test_json_has_every_method_and_the_streaming_row(toy_run) -> None:
    out, _ = toy_run
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["toy"] is True
    assert report["machine"]["torch"] and report["machine"]["matmul_peak"]["flops"] > 0
    rows = {row["method"]: row for row in report["benches"]}
    assert set(rows) == benchable_methods()
    assert "mae-ct" not in rows and {"mae-ct-head", "mae-ct-tune"} <= set(rows)
    errors = {m: row["error"] for m, row in rows.items() if "error" in row}
    assert not errors
    for method, row in rows.items():
        assert row["images_per_second"] > 0, method
        assert row["model"] == "vit-pico" and row["img_size"] == 32 and row["precision"] == "fp32"
        assert 0 < row["flops_utilization"] and row["peak_memory_mb"] > 0, method
    stream = report["streaming"]
    assert "error" not in stream, stream
    assert stream["images_per_second"] > 0
    assert 0 <= stream["data_wait_percent"] <= 100
    assert stream["workers"] == 1 and stream["logged_steps"] >= 2
    assert report["cuda_tests"]["exit_code"] is None and report["failures"] == []


def test_markdown_tables(toy_run) -> None:
    out, _ = toy_run
    text = (out / "gpu_check.md").read_text()
    assert "| method | model | image | batch | precision | img/s | ms/step | MFU % | peak memory MB |" in text
    assert "| run | model | image | batch | workers | img/s | data wait % | wall s |" in text
    assert "| mae-ct-tune | vit-pico/8 | 32 | 8 | fp32 |" in text
    assert "| mae stream | vit-pico/8 | 32 | 8 | 1 |" in text
