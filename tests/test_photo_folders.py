"""Photo folders end to end through the CLI: a train/ + val/ root streamed by workers at a size below
the photos', evaluation that finds val/ by itself, memory and stream giving the same evaluation, bad
files met while streaming, and two DDP processes reading disjoint parts of each batch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hybridssl.cli import main
from hybridssl.weights.ours import load_checkpoint
from tests.subprocess_runs import run_driver

STREAM = ["--dataset", "folder", "--image-size", "32", "--patch-size", "8", "--model", "vit-pico", "--batch-size", "16",
          "--accelerator", "cpu", "--no-progress-bar", "--loader", "stream", "--num-workers", "2"]  # fmt: skip


def results(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def streamed_run(photo_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("streamed")
    assert main(["pretrain", "--method", "mae", "--data-dir", str(photo_root), "--max-steps", "3", "--output", str(out), *STREAM]) == 0
    return out


def test_a_train_val_root_pretrains_on_train_only_and_evaluation_finds_val(streamed_run, photo_root):
    ckpt = load_checkpoint(streamed_run / "checkpoints" / "last.ckpt")
    assert [p.name for p in (streamed_run / "checkpoints").iterdir()] == ["last.ckpt"], "one final file, no last-v1 copy"
    train_files = len(list((photo_root / "train").rglob("*.jpg")))
    val_files = len(list((photo_root / "val").rglob("*.jpg")))
    info = ckpt["hybridssl"]["data_info"]
    assert info["num_images"] == train_files and info["num_classes"] == 4, "train/ only, its 4 classes (not 'train', 'val')"
    assert info["image_size"] == 32
    assert main(["evaluate", "--checkpoint", str(streamed_run / "checkpoints" / "last.ckpt"), "--protocol", "knn",
                 "--k", "5", "--output", str(streamed_run), "--loader", "stream", "--num-workers", "2"]) == 0  # fmt: skip
    (row,) = results(streamed_run)
    assert row["train_size"] == train_files and row["test_size"] == val_files and row["dataset"] == "folder"


def test_memory_and_stream_evaluate_the_same_features_closely(streamed_run, tmp_path):
    ckpt = str(streamed_run / "checkpoints" / "last.ckpt")
    for loader in ("memory", "stream"):
        assert main(["evaluate", "--checkpoint", ckpt, "--protocol", "knn", "--k", "5", "--output", str(tmp_path / loader),
                     "--loader", loader, "--num-workers", "0"]) == 0  # fmt: skip
    memory, stream = (results(tmp_path / name)[0] for name in ("memory", "stream"))
    assert memory["train_size"] == stream["train_size"] and memory["test_size"] == stream["test_size"]
    # PIL (memory) and torchvision (stream) resize differently in the last bit; the votes barely move
    assert abs(memory["value"] - stream["value"]) <= 10.0


def test_fine_tuning_streams_the_folder_through_workers(streamed_run, tmp_path, monkeypatch):
    """Neither split is decoded whole (an ImageNet-size folder would not fit): workers cut the crops."""
    from hybridssl.data.streaming import StreamingSet

    def decoded_whole(*args, **kwargs):
        raise AssertionError("a streamed split was decoded into memory")

    monkeypatch.setattr(StreamingSet, "materialize", decoded_whole)
    assert main(["evaluate", "--checkpoint", str(streamed_run / "checkpoints" / "last.ckpt"), "--protocol", "finetune",
                 "--set", "finetune.epochs=1", "--set", "finetune.batch_size=16", "--output", str(tmp_path),
                 "--loader", "stream", "--num-workers", "2"]) == 0  # fmt: skip
    (row,) = results(tmp_path)
    assert row["protocol"] == "finetune" and row["settings"]["steps"] == row["train_size"] // 16
    assert row["settings"]["crops"] == "cut by workers from the full-resolution files"


def test_low_shot_fine_tunes_the_files_its_labels_were_chosen_from(streamed_run, photo_root, tmp_path, monkeypatch):
    """Low-shot picks class-balanced rows among the train features, which leave unreadable files out:
    the fine-tune must get those rows' files, not the files at the same positions of the folder."""
    from hybridssl.evaluation import run as eval_run
    from hybridssl.evaluation.finetune import FinetuneResult

    root = tmp_path / "photos"
    shutil.copytree(photo_root, root)
    victim = sorted((root / "train").rglob("*.jpg"))[0]
    victim.write_bytes(b"")
    given = []
    monkeypatch.setattr(eval_run, "decoded_when_small", lambda data, batch_size: data)
    monkeypatch.setattr(eval_run, "finetune", lambda encoder, train, *a, **k: given.append(train) or FinetuneResult(50.0, 1.0, 1, 1e-3, 0.0))
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        assert main(["evaluate", "--checkpoint", str(streamed_run / "checkpoints" / "last.ckpt"), "--protocol", "lowshot",
                     "--data-dir", str(root), "--lowshot-subsets", "3", "--seeds", "1", "--output", str(tmp_path / "eval"),
                     "--loader", "stream", "--num-workers", "0"]) == 0  # fmt: skip
    (share,) = given
    files = [share.index.describe(i) for i in range(len(share))]
    assert victim.name not in " ".join(files)
    assert sorted(share.labels.tolist()) == [c for c in range(4) for _ in range(3)], "3 images of each class"


def test_unreadable_files_met_while_streaming_are_skipped_or_fatal_with_strict(photo_root, tmp_path, capsys):
    root = tmp_path / "photos"
    shutil.copytree(photo_root, root)
    victim = sorted((root / "train").rglob("*.jpg"))[0]
    victim.write_bytes(b"")
    with pytest.warns(UserWarning, match=f"skipping unreadable image .*{victim.name}"):
        assert main(["pretrain", "--method", "mae", "--data-dir", str(root), "--max-steps", "5", "--output", str(tmp_path / "a"),
                     "--set", "seed=1", *STREAM]) == 0  # fmt: skip
    assert main(["pretrain", "--method", "mae", "--data-dir", str(root), "--max-steps", "5", "--output", str(tmp_path / "b"),
                 "--strict", *STREAM]) == 2  # fmt: skip
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("hybridssl: error: unreadable image") and victim.name in error


@pytest.mark.ddp
def test_two_processes_train_from_streamed_files_each_loading_its_own_part(photo_root, tmp_path):
    """End to end with workers in two processes; which samples each rank reads is checked in
    tests/data/test_streaming.py (disjoint parts of each global batch)."""
    out = tmp_path / "ddp"
    run_driver(["pretrain", "--method", "simclr", "--data-dir", str(photo_root), "--max-steps", "2", "--devices", "2",
                "--batch-size", "8", "--output", str(out), *STREAM[:8], *STREAM[10:]])  # fmt: skip
    ckpt = load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2 and ckpt["callbacks"]["DataPosition"]["global_batch"] == 16
    assert not ckpt["hybridssl"]["config"]["global_batch_views"], "each rank augments its own part by default"
