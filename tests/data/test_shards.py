"""Packed shards (litdata): every image and label comes back, sample i is source sample i, the streaming
loader asks for the same samples and cuts the same crops as from the files, and bad locations fail
with one line."""

from __future__ import annotations

import json
import pickle
import re
import time
import warnings

import numpy as np
import pytest
import torch
from torchvision.io import encode_png

from hybridssl.cli import main
from hybridssl.data.pack import pack
from hybridssl.data.shards import ShardIndex
from hybridssl.data.sources import load_dataset, record_index
from hybridssl.data.streaming import CropDataset, StreamingLoader
from hybridssl.data.views import Crop
from hybridssl.errors import DataError


@pytest.fixture(scope="module")
def packed_photos(photo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("packed")
    meta = pack(str(photo_root), out, chunk_bytes="64KB")  # several chunks
    return out, meta


def test_a_packed_folder_gives_back_every_file_and_label_in_order(photo_root, packed_photos):
    out, meta = packed_photos
    assert len(list(out.joinpath("train").glob("chunk-*.bin"))) > 1
    for split in ("train", "test"):
        files, shards = record_index("folder", photo_root, split), record_index("shards", out, split)
        assert len(files) == len(shards) == meta["splits"][split]
        assert shards.classes == files.classes == ["class0", "class1", "class2", "class3"]
        assert shards.labels.tolist() == files.labels.tolist()
        for i in range(len(files)):
            assert torch.equal(files.read(i, 3), shards.read(i, 3)), f"{split} sample {i}"


def test_the_streaming_loader_asks_for_the_same_samples_and_crops(photo_root, packed_photos):
    out, _ = packed_photos
    crops = [Crop(16, (0.2, 1.0)), Crop(16, (0.2, 1.0))]
    batches = []
    for index in (record_index("folder", photo_root, "train"), record_index("shards", out, "train")):
        loader = StreamingLoader(CropDataset(index.take(40, seed=1), crops, 3, seed=9), 8, seed=9, num_workers=2)
        batches.append([(b["ids"], b["labels"], b["crops"][1]) for b in loader])
    assert len(batches[0]) == len(batches[1]) == 5
    for (ids_a, labels_a, crop_a), (ids_b, labels_b, crop_b) in zip(*batches):
        assert torch.equal(ids_a, ids_b) and torch.equal(labels_a, labels_b) and torch.equal(crop_a, crop_b)


def test_a_named_dataset_packs_losslessly_with_its_splits(fmnist_dir, tmp_path):
    meta = pack("fashion-mnist", tmp_path / "fm", data_dir=fmnist_dir)
    assert meta["splits"] == {"train": 512, "test": 128}
    for split in ("train", "test"):
        original = load_dataset("fashion-mnist", split, fmnist_dir)
        packed = load_dataset("shards", split, tmp_path / "fm", image_size=28, channels=1)
        assert torch.equal(original.images, packed.images) and torch.equal(original.labels, packed.labels)


def test_pretrain_and_evaluate_from_shards_through_the_cli(packed_photos, tmp_path, capsys):
    out, meta = packed_photos
    run = tmp_path / "run"
    args = ["pretrain", "--method", "mae", "--dataset", "shards", "--data-dir", str(out), "--image-size", "32", "--patch-size", "8",
            "--batch-size", "16", "--max-steps", "2", "--loader", "stream", "--num-workers", "2", "--no-progress-bar",
            "--accelerator", "cpu", "--output", str(run)]  # fmt: skip
    assert main(args) == 0
    assert main(["evaluate", "--checkpoint", str(run / "checkpoints" / "last.ckpt"), "--protocol", "knn", "--k", "5",
                 "--output", str(run)]) == 0  # fmt: skip
    (row,) = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines() if '"k": 5' in line]
    assert row["dataset"] == "shards" and row["test_size"] == meta["splits"]["test"] and row["train_size"] == meta["splits"]["train"]
    assert main(["pretrain", "--method", "mae", "--dataset", "shards", "--data-dir", str(tmp_path), "--output", str(tmp_path / "x")]) == 2
    assert "no packed dataset" in capsys.readouterr().err


def test_unknown_sources_fail_with_one_line(tmp_path):
    with pytest.raises(DataError, match="neither a folder"):
        pack("no-such-thing", tmp_path / "out")


def test_a_pack_whose_writer_lost_records_is_an_error_not_a_short_dataset(tmp_path, monkeypatch):
    """A packing process killed by the system leaves litdata's index without chunks and no exception."""
    import hybridssl.data.shards as shards

    monkeypatch.setattr(shards, "written_records", lambda location: 3)
    with pytest.raises(DataError, match="wrote 3 of"):
        shards.write_split(shards.ArraySource(torch.zeros(5, 1, 4, 4, dtype=torch.uint8), torch.zeros(5).long().numpy()),
                           str(tmp_path / "split"))  # fmt: skip
    assert not (tmp_path / "split" / "labels.npy").exists()


def test_packing_leaves_the_process_start_method_and_ctrl_c_alone(tmp_path):
    """litdata switches the process to spawn and leaves a SIGINT handler that ends it with os._exit(0):
    a Ctrl+C after a pack (in one Python session, or a test run) would end everything silently."""
    import multiprocessing
    import signal

    before, sigint = multiprocessing.get_start_method(allow_none=True), signal.getsignal(signal.SIGINT)
    from hybridssl.data.shards import ArraySource, write_split

    write_split(ArraySource(torch.zeros(4, 1, 4, 4, dtype=torch.uint8), torch.zeros(4).long().numpy()), str(tmp_path / "s"))
    assert multiprocessing.get_start_method(allow_none=True) == before
    assert signal.getsignal(signal.SIGINT) is sigint


class _CountingReader:
    """Stands in for litdata's StreamingDataset: records how many threads are inside a read at once."""

    inside = 0
    most_inside = 0
    opened = 0
    failing = 0  # how many of the next readers opened fail every read

    def __init__(self, root: str, **kwargs) -> None:
        cls = type(self)
        cls.opened += 1
        self.fails = cls.failing > 0
        cls.failing = max(0, cls.failing - 1)

    def __getitem__(self, row: int) -> dict:
        if row >= 100:  # the fake pack holds 100 records
            raise IndexError(row)
        cls = type(self)
        cls.inside += 1
        cls.most_inside = max(cls.most_inside, cls.inside)
        time.sleep(0.002)
        cls.inside -= 1
        if self.fails:
            raise AssertionError  # what litdata's reader raised once its chunk state went stale
        image = torch.full((3, 8, 8), row, dtype=torch.uint8)
        return {"image": encode_png(image).numpy().tobytes()}


@pytest.fixture
def counting_reader(monkeypatch):
    import litdata

    monkeypatch.setattr(litdata, "StreamingDataset", _CountingReader)
    for name, value in (("inside", 0), ("most_inside", 0), ("opened", 0), ("failing", 0)):
        monkeypatch.setattr(_CountingReader, name, value)
    return _CountingReader


def test_decoding_a_pack_from_threads_reads_one_record_at_a_time(counting_reader):
    from hybridssl.data.sources import decode_index

    index = ShardIndex("unused", np.arange(32), np.zeros(32, dtype=np.int64), None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decoded = decode_index(index, 8, 3)
    assert not [w for w in caught if "unreadable" in str(w.message)]
    assert [int(image[0, 0, 0]) for image in decoded.images] == list(range(32))
    assert counting_reader.most_inside == 1 and counting_reader.opened == 1


def test_a_failed_record_read_is_retried_once_on_a_fresh_reader(counting_reader):
    index = ShardIndex("unused", np.arange(4), np.zeros(4, dtype=np.int64), None)
    counting_reader.failing = 1
    with pytest.warns(UserWarning, match="unused sample 3: reading it failed .AssertionError"):
        assert int(index.read(3, 3)[0, 0, 0]) == 3
    assert counting_reader.opened == 2
    counting_reader.failing = 2  # a record no reader can read is an error (reported as unreadable upstream)
    index = ShardIndex("unused", np.arange(4), np.zeros(4, dtype=np.int64), None)
    with pytest.raises(AssertionError), pytest.warns(UserWarning):
        index.read(0, 3)
    index = ShardIndex("unused", np.arange(101), np.zeros(101, dtype=np.int64), None)
    with pytest.raises(IndexError):  # a record the pack does not have: no retry
        index.read(100, 3)
    assert counting_reader.opened == 5


def test_a_pickled_shard_index_opens_its_own_reader(counting_reader):
    index = ShardIndex("unused", np.arange(4), np.zeros(4, dtype=np.int64), None)
    index.read(0, 3)
    copy = pickle.loads(pickle.dumps(index))
    assert copy._dataset is None and copy.read(1, 3).shape == (3, 8, 8) and counting_reader.opened == 2


def test_a_forked_copy_of_a_shard_index_opens_its_own_reader_and_lock(counting_reader, monkeypatch):
    import os

    index = ShardIndex("unused", np.arange(4), np.zeros(4, dtype=np.int64), None)
    index.read(0, 3)
    index._lock.acquire()  # held by another thread of the parent at the moment of the fork
    monkeypatch.setattr(os, "getpid", lambda: index._pid + 1)  # now in the child
    assert index.read(1, 3).shape == (3, 8, 8) and counting_reader.opened == 2


def test_pack_shows_one_bar_over_every_split_and_nothing_of_litdatas(tmp_path, capfd, monkeypatch):
    """litdata's optimize prints an account-creation advert, its logs and a bar per split (workers
    included, hence capfd); a pack shows one bar of its own, which follows the worker's records."""
    import tqdm.auto

    from hybridssl.data.synthetic import write_photo_folder

    bars = {}  # id -> bar, as each closes (close runs again on deletion)

    class Recorded(tqdm.auto.tqdm):
        def close(self) -> None:
            if not self.disable:
                bars.setdefault(id(self), self)
            super().close()

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorded)
    root = write_photo_folder(tmp_path / "photos", 6, num_classes=2, sizes=(24, 32), val_fraction=0.34)
    capfd.readouterr()
    meta = pack(str(root), tmp_path / "out")
    out, err = capfd.readouterr()
    for text in ("lightning.ai", "Create an account", "Storing the files", "Workers are", "Progress:"):
        assert text not in out + err, text
    descriptions = set(re.findall(r"([a-z][\w ]*?): +\d+%\|", err))
    assert descriptions <= {"packing", "packing train", "packing test"} and "packing train" in descriptions, descriptions
    assert out == "", "a bar and nothing else, on stderr"
    assert [(bar.n, bar.total) for bar in bars.values()] == [(6, 6)] and meta["splits"] == {"train": 4, "test": 2}


# ----------------------------------------------------------------------------- damage


def folder_with_bad_files(root):
    """A flat folder of 10 readable PNG/JPEG files and 4 that are not (named bad_*)."""
    from PIL import Image

    from tests.data.test_streaming import corrupt_png

    root.mkdir(parents=True)
    for i in range(10):
        pixels = np.full((24, 32, 3), i * 20, dtype=np.uint8)
        pixels[:, :, 1] = np.random.default_rng(i).integers(0, 256, (24, 32), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{i:02d}.{'png' if i % 2 else 'jpg'}")
    corrupt_png(root / "bad_idat.png", root / "01.png")  # crashed torchvision's decoder
    (root / "bad_cut.jpg").write_bytes((root / "00.jpg").read_bytes()[:300])
    (root / "bad_empty.png").write_bytes(b"")
    (root / "bad_text.jpg").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def damaged_source_pack(tmp_path_factory):
    """The folder above packed into several chunks, with the warnings packing gave."""
    root = folder_with_bad_files(tmp_path_factory.mktemp("bad") / "flat")
    out = tmp_path_factory.mktemp("bad-packed")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meta = pack(str(root), out, chunk_bytes="8KB")
    return root, out, meta, [str(w.message) for w in caught]


def test_pack_stores_only_readable_files_and_names_each_one_left_out(damaged_source_pack):
    root, out, meta, messages = damaged_source_pack
    assert meta["splits"] == {"train": 10}
    left = meta["left_out"]["train"]
    assert sorted(line.split(":")[0].rsplit("/", 1)[1] for line in left) == ["bad_cut.jpg", "bad_empty.png", "bad_idat.png", "bad_text.jpg"]
    assert json.loads((out / "meta.json").read_text())["left_out"] == meta["left_out"]
    assert sum("pack: leaving out unreadable image" in m for m in messages) == 4
    assert any("pack: left out 4 of 14 files of the train split" in m for m in messages)
    shards = record_index("shards", out, "train")
    assert len(list((out / "train").glob("chunk-*.bin"))) > 1
    for i in range(len(shards)):
        assert shards.read(i, 3).shape == (3, 24, 32)


def test_a_truncated_or_missing_chunk_fails_fast_naming_it(damaged_source_pack, tmp_path):
    """litdata waited 2 s for each read of a short chunk, then failed it, sample after sample: a run
    crawled on with no error. Opening the split, and each read, check the chunk against index.json."""
    import shutil

    from hybridssl.data.shards import ChunkError
    from hybridssl.data.sources import decode_index

    _, out, _, _ = damaged_source_pack
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    chunks = sorted((copy / "train").glob("chunk-*.bin"))
    intact = record_index("shards", copy, "train")  # opened while whole: the reads must notice
    size = chunks[1].stat().st_size
    with open(chunks[1], "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(ChunkError, match=rf"{chunks[1].name} has {size // 2:,} bytes, index.json says {size:,} \(truncated\)"):
        record_index("shards", copy, "train")
    first_of_second = json.loads((copy / "train" / "index.json").read_text())["chunks"][0]["chunk_size"]
    start = time.perf_counter()
    with pytest.raises(ChunkError, match=chunks[1].name):
        intact.read(first_of_second, 3)
    assert time.perf_counter() - start < 1.0, "no 2 s wait"
    assert intact.read(0, 3).shape == (3, 24, 32), "the other chunks still read"
    start = time.perf_counter()
    with pytest.raises(DataError, match=f"damaged pack: chunk .*{chunks[1].name}"):
        list(StreamingLoader(CropDataset(intact, [Crop(8, (0.5, 1.0))], 3, seed=0), 5, seed=0, num_workers=2))
    with pytest.raises(DataError, match=chunks[1].name):
        decode_index(intact, 8, 3)
    assert time.perf_counter() - start < 20, "stopped at once, not after 64 skips of 2-4 s"
    chunks[1].unlink()
    with pytest.raises(ChunkError, match=f"{chunks[1].name} is missing; pack it again"):
        record_index("shards", copy, "train")


def test_a_pack_holding_a_damaged_png_decodes_into_memory_without_crashing(damaged_source_pack, tmp_path):
    """Packs written before `pack` checked its files can hold one; in memory, torchvision's crash took
    the whole process down (rc 139, no message). Loaded in a child so that a crash fails here."""
    import subprocess
    import sys

    from hybridssl.data.index import file_index
    from hybridssl.data.shards import FileSource, write_meta, write_split

    root, _, _, _ = damaged_source_pack
    index = file_index(root)
    keep = np.array([i for i in range(len(index)) if "bad_" not in index.describe(i) or "idat" in index.describe(i)])
    source = FileSource(index.select(keep))
    write_split(source, str(tmp_path / "old" / "train"))
    write_meta(tmp_path / "old", {"source": str(root), "classes": None, "splits": {"train": len(source)}})
    script = f"from hybridssl.data.sources import load_dataset; print(len(load_dataset('shards', 'train', {str(tmp_path / 'old')!r}, image_size=8)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"rc {done.returncode}: {done.stderr[-300:]}"
    assert done.stdout.strip() == "10"
    bad_row = [index.describe(int(i)) for i in keep].index(str(root / "bad_idat.png"))
    assert f"skipping unreadable image {tmp_path / 'old' / 'train'} sample {bad_row}" in done.stderr

