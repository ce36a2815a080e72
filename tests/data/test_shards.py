"""Packed shards (litdata): every image and label comes back, sample i is source sample i, the streaming
loader asks for the same samples and cuts the same crops as from the files, and bad locations fail
with one line."""

from __future__ import annotations

import json
import pickle
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


def test_packing_leaves_the_process_start_method_alone(tmp_path):
    import multiprocessing

    before = multiprocessing.get_start_method(allow_none=True)
    from hybridssl.data.shards import ArraySource, write_split

    write_split(ArraySource(torch.zeros(4, 1, 4, 4, dtype=torch.uint8), torch.zeros(4).long().numpy()), str(tmp_path / "s"))
    assert multiprocessing.get_start_method(allow_none=True) == before


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
