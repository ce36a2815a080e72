"""What `pip install` (not editable) puts on a user's machine: the demo's shipped MAE start among it."""

import subprocess
import sys
import zipfile
from pathlib import Path

from hybridssl import demo

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_carries_the_shipped_mae_start(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)  # fmt: skip
    (wheel,) = tmp_path.glob("hybridssl-*.whl")
    inside = f"hybridssl/{demo.MAE_START.relative_to(Path(demo.__file__).parent).as_posix()}"
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read(inside) == demo.MAE_START.read_bytes()
