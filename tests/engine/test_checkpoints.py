import pytest
import torch

from hybridssl.errors import CheckpointError
from hybridssl.weights.ours import atomic_save, load_checkpoint


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "c.ckpt"
    atomic_save({"a": torch.ones(2)}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        atomic_save({"a": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.ckpt"], "no temporary file left behind"


def test_load_rejects_foreign_and_torn_files(tmp_path):
    (tmp_path / "text.ckpt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "text.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not a hybridssl checkpoint"):
        load_checkpoint(tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")


class Evil:
    """Any class: weights_only loading must refuse to construct it."""


def test_load_refuses_pickled_objects(tmp_path):
    torch.save({"hybridssl": Evil(), "state_dict": {}}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.ckpt")


WRITER = """
import sys, torch
from hybridssl.weights.ours import atomic_save
path, step = sys.argv[1], int(sys.argv[2])
while True:  # 20 MB per save: each write takes long enough to be interrupted
    atomic_save({"step": step, "weights": torch.full((5_000_000,), float(step))}, path)
    step += 1
"""


def test_kill_during_repeated_saves_leaves_a_loadable_checkpoint(tmp_path):
    """SIGKILL a process that saves over the same file in a loop, half the time while a temporary
    file is being written, half at a random moment; the target always loads whole, and a kill leaves at
    most its own write's temporary file (every write has its own name: the engine removes stale ones)."""
    import os
    import random
    import re
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    src = str(Path(__file__).parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    path = tmp_path / "c.ckpt"
    rng = random.Random(0)
    last_step = -1
    for attempt in range(6):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(last_step + 1)], env=env)
        deadline = time.monotonic() + 120
        while not path.exists() or (attempt % 2 == 0 and not list(tmp_path.glob(".c.ckpt.*.tmp"))):
            assert proc.poll() is None and time.monotonic() < deadline, "the writer died or stalled"
            time.sleep(0.001)
        if attempt % 2:
            time.sleep(rng.uniform(0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = torch.load(path, weights_only=True)
        assert ckpt["step"] >= last_step and torch.equal(ckpt["weights"], torch.full((5_000_000,), float(ckpt["step"])))
        last_step = ckpt["step"]
        leftovers = [p.name for p in tmp_path.iterdir() if p.name != "c.ckpt"]
        assert len(leftovers) <= 1 and all(re.fullmatch(rf"\.c\.ckpt\.{proc.pid}\.[0-9a-f]+\.tmp", n) for n in leftovers), leftovers
        for stale in leftovers:  # as a run removes the stale ones of its checkpoint folder when it starts
            (tmp_path / stale).unlink()


def test_export_carries_the_input_size_and_normalization_timm_resolves(tiny_mae_run, tmp_path):
    """timm's data config of an exported encoder is what it was trained with, not the registry's 0.5/0.5."""
    import json

    import timm
    from safetensors import safe_open

    from hybridssl.weights.export import export_encoder
    from hybridssl.weights.loading import load_trained_encoder as load_encoder

    ckpt = tiny_mae_run / "checkpoints" / "last.ckpt"
    path = tmp_path / "encoder.safetensors"
    kwargs = export_encoder(ckpt, path)
    info = load_encoder(ckpt).info
    model = timm.create_model("vit_base_patch16_224", pretrained=False, checkpoint_path=str(path), **kwargs)
    config = timm.data.resolve_data_config(model=model)
    assert tuple(config["mean"]) == info.mean and tuple(config["std"]) == info.std
    assert tuple(config["input_size"]) == (1, 28, 28) and config["crop_pct"] == 1.0 and config["interpolation"] == "bicubic"
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    assert json.loads(metadata["pretrained_cfg"])["mean"] == list(info.mean) and metadata["hybridssl_pooling"] == "mean_patch"
    assert json.loads(metadata["timm_kwargs"]) == json.loads(json.dumps(kwargs))


def test_a_release_keeps_what_loaders_read_and_drops_what_only_resuming_needs(tiny_mae_run, tmp_path):
    from hybridssl.weights.ours import load_method, release_checkpoint

    full = tiny_mae_run / "checkpoints" / "last.ckpt"
    release_checkpoint(full, tmp_path / "release.ckpt")
    original, released = load_checkpoint(full), load_checkpoint(tmp_path / "release.ckpt")
    assert set(released) == {"state_dict", "hybridssl"}, "no optimizer, loop or callback state"
    assert "rng" not in released["hybridssl"] and released["hybridssl"]["released_from"] == "last.ckpt"
    assert {k: v for k, v in released["hybridssl"].items() if k != "released_from"} == {
        k: v for k, v in original["hybridssl"].items() if k != "rng"}
    assert released["state_dict"].keys() == original["state_dict"].keys()
    assert all(torch.equal(released["state_dict"][k], v) for k, v in original["state_dict"].items())
    assert (tmp_path / "release.ckpt").stat().st_size < full.stat().st_size / 2
    a, b = load_method(full), load_method(tmp_path / "release.ckpt")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
