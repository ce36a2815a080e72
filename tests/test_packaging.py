"""What `pip install` (not editable) puts on a user's machine: the demo's shipped MAE start and the
configs `--config NAME` finds among it."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from hybridssl import demo
from hybridssl.shipped_configs import shipped_configs

ROOT = Path(__file__).resolve().parents[1]


# built from a copy without these: setuptools packs whatever an earlier build left in build/lib, which
# hid a missing package-data entry here
NOT_SOURCES = (".git", ".venv", "build", "dist", "runs", "mutants", "*.egg-info", "__pycache__", ".*_cache")


def test_the_wheel_carries_the_shipped_mae_start_and_configs(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(source)],
                   check=True, capture_output=True)  # fmt: skip
    (wheel,) = tmp_path.glob("hybridssl-*.whl")
    inside = f"hybridssl/{demo.MAE_START.relative_to(Path(demo.__file__).parent).as_posix()}"
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read(inside) == demo.MAE_START.read_bytes()
        for name, path in shipped_configs().items():
            assert archive.read(f"hybridssl/configs/{name}.yaml") == path.read_bytes()
