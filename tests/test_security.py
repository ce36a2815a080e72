"""Checkpoints never run code when loaded (weights_only=True on every path: evaluate, --resume,
--init-from, export, the demo's method loader), and configs name only registered methods, models and
datasets, never import paths."""

from __future__ import annotations

import pathlib
import re
import shutil
from pathlib import Path

import pytest
import torch

from hybridssl.cli import main
from hybridssl.errors import CheckpointError
from hybridssl.weights.ours import load_method
from tests.subprocess_runs import threads

SRC = Path(__file__).parents[1] / "src" / "hybridssl"
CPU = ["--accelerator", "cpu", "--no-progress-bar", "--model", "vit-pico", "--batch-size", "16", "--limit-train", "32"]


class Payload:
    """Unpickling this would touch a file: the proof that a load executed code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def trained(fmnist_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    with threads():
        assert main(["pretrain", "--method", "mae", *CPU, "--data-dir", str(fmnist_dir), "--max-steps", "1", "--output", str(out)]) == 0
    return out / "checkpoints" / "last.ckpt"


@pytest.fixture
def poisoned(trained, tmp_path) -> tuple[Path, Path]:
    """A real checkpoint with a code-executing object slipped into its metadata."""
    marker = tmp_path / "code-ran"
    ckpt = torch.load(trained, weights_only=True)
    ckpt["hybridssl"]["note"] = Payload(marker)
    path = tmp_path / "poisoned.ckpt"
    torch.save(ckpt, path)
    return path, marker


def only_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_the_payload_would_run_under_a_plain_load(poisoned):
    path, marker = poisoned
    torch.load(path, weights_only=False)
    assert marker.exists()  # so the refusals below are refusals of a live payload
    marker.unlink()


def test_evaluate_export_init_from_and_resume_refuse_pickled_objects(poisoned, fmnist_dir, tmp_path, capsys):
    path, marker = poisoned
    commands = {
        "evaluate": ["evaluate", "--checkpoint", str(path), "--protocol", "knn", "--data-dir", str(fmnist_dir), "--output", str(tmp_path / "e")],
        "export": ["export", "--checkpoint", str(path), "--output", str(tmp_path / "enc.safetensors")],
        "init_from": ["pretrain", "--method", "mae", *CPU, "--data-dir", str(fmnist_dir), "--max-steps", "1", "--output", str(tmp_path / "i"), "--init-from", str(path)],
    }  # fmt: skip
    run = tmp_path / "r"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(path, run / "checkpoints" / "last.ckpt")
    commands["resume"] = ["pretrain", "--method", "mae", *CPU, "--data-dir", str(fmnist_dir), "--max-steps", "2", "--output", str(run), "--resume"]
    for name, args in commands.items():
        assert main(args) == 2, name
        line = only_error_line(capsys)
        assert "is not a readable checkpoint" in line and "a weights-only load refuses" in line, (name, line)
        assert not marker.exists(), name
    with pytest.raises(CheckpointError):
        load_method(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "field, value",
    [("method", "os.system"), ("method", "hybridssl.methods.mae.MAE"), ("model", "timm.models.vit_base_patch16_224"),
     ("model", "torch.nn.Linear"), ("dataset", "torchvision.datasets.MNIST"), ("dataset", "builtins.eval")],
)  # fmt: skip
def test_configs_name_registered_things_only(field, value, tmp_path, capsys):
    flags = {"method": "mae", field: value}
    assert main(["pretrain", *(a for k, v in flags.items() for a in (f"--{k}", v)), "--output", str(tmp_path)]) == 2
    line = only_error_line(capsys)
    assert f"{field}: unknown {field} {value!r}; choose one of" in line
    config = tmp_path / "run.yaml"
    config.write_text(f"method: mae\n{field}: {value}\n")
    assert main(["pretrain", "--config", str(config), "--output", str(tmp_path / "o")]) == 2
    assert f"unknown {field} {value!r}" in only_error_line(capsys)


def test_yaml_tags_that_construct_objects_are_refused(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    config = tmp_path / "run.yaml"
    config.write_text(f"method: mae\nseed: !!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path ['{marker}']]\n")
    assert main(["pretrain", "--config", str(config), "--output", str(tmp_path / "o")]) == 2
    assert "is not valid YAML" in only_error_line(capsys) and not marker.exists()


def test_a_checkpoint_whose_config_names_an_import_path_is_refused(trained, tmp_path):
    ckpt = torch.load(trained, weights_only=True)
    ckpt["hybridssl"]["config"]["method"] = "os.system"
    path = tmp_path / "renamed.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="unknown method 'os.system'"):
        load_method(path)


def test_no_code_path_imports_or_evaluates_names(tmp_path):
    """Names from configs and checkpoints go through the registries (METHODS, PRESETS, DATASETS):
    nothing in the package imports, evaluates or unpickles by name (importlib.metadata, which reads
    installed packages' versions and runs nothing, is allowed)."""
    forbidden = re.compile(r"importlib(?!\.metadata import)|__import__|(?<![.\w])eval\(|(?<![.\w])exec\(|pydoc\.locate|import_string|pickle\.load|yaml\.load\(|yaml\.unsafe_load|yaml\.Loader")
    hits = [f"{p.relative_to(SRC)}:{i}: {line.strip()}" for p in SRC.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if forbidden.search(line)]  # fmt: skip
    assert hits == []
    loads = [f"{p.relative_to(SRC)}:{i}" for p in SRC.rglob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1)
             if "torch.load(" in line and "weights_only=True" not in line]  # fmt: skip
    assert loads == []
