"""benchmarks/archive/results_gpu.py: the epochs it fits into the time given, and (slow) its toy run on the CPU,
so the one-call GPU results table cannot rot between the sessions that are lent a GPU."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "archive" / "results_gpu.py"


def script():
    spec = importlib.util.spec_from_file_location("results_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_epochs_fit_the_slowest_row() -> None:
    rg = script()
    # 60k images at 1,000 img/s: 60 s x 1.3 overhead = 78 s per epoch; 10 minutes hold 7 of them
    rates = {"simclr": 1000.0, "can": 4000.0}
    assert rg.choose_epochs(rates, minutes=10, max_epochs=100, images=60_000) == 7
    assert rg.choose_epochs(rates, minutes=10, max_epochs=5, images=60_000) == 5
    assert rg.choose_epochs(rates, minutes=0.1, max_epochs=100, images=60_000) == 1


def test_the_mae_row_holds_its_mae_ct_stages() -> None:
    rg = script()
    rates = {"mae": 6000.0, "mae-ct": 2000.0}  # 13 s per MAE epoch, 39 s per MAE-CT epoch
    stages = rg.MAE_CT_EPOCHS * 60_000 / 2000 * rg.OVERHEAD
    expected = int((600 - stages) // (60_000 / 6000 * rg.OVERHEAD))
    assert rg.choose_epochs(rates, minutes=10, max_epochs=1000, images=60_000) == expected
    assert expected < 600 // (60_000 / 6000 * rg.OVERHEAD)  # without the stages more would fit


def test_the_deadline_stops_every_job_and_what_it_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rg = script()
    children = tmp_path / "children"

    def launch(out, name, cmd, env):  # a job that starts a child of its own, as results_row.sh starts hybridssl
        return subprocess.Popen(["sh", "-c", f"sleep 60 & echo $! >> {children}; wait"], start_new_session=True)

    monkeypatch.setattr(rg, "launch", launch)
    start = time.monotonic()
    codes = rg.run_jobs(tmp_path, ["mae", "simclr"], "1", 0, {}, deadline=time.monotonic() + 2)
    assert time.monotonic() - start < 15 and codes == {"mae": -signal.SIGTERM, "simclr": -signal.SIGTERM}
    time.sleep(0.5)
    for pid in children.read_text().split():
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().split(")")[1].split()[0] == "Z", f"child {pid} still runs"
    assert "deadline: stopping mae, simclr" in (tmp_path / "log.txt").read_text()


@pytest.mark.slow
def test_toy_run_writes_the_whole_table(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    env.pop("HYBRIDSSL", None)
    result = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--toy", "--rows", "mae,simclr", "--finetune-epochs", "1"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["epochs"] == 1 and set(plan["images_per_second"]) == {"mae", "simclr", "mae-ct"}
    lines = [line for line in (tmp_path / "table.md").read_text().splitlines() if line.startswith("| ")][1:]  # below the header
    table = {line.split(" | ")[0].strip("| ").split(" (")[0]: line.split(" | ") for line in lines}  # names, not labels
    assert set(table) == {"mae", "mae-ct", "simclr", "random init", "raw pixels"}
    for name, cells in table.items():  # k-NN, linear and (not for raw pixels) fine-tune measured
        assert all(c != "–" for c in cells[2:4]), name
        assert (cells[4] == "–") == (name == "raw pixels"), name
    assert (tmp_path / "results.png").stat().st_size > 0
