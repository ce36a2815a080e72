import pytest
import torch

from hybridssl.engine.checkpoints import CheckpointError, atomic_save, load_checkpoint


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
