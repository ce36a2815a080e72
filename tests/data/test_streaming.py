"""Streaming path: crops from the full photo keyed by (seed, epoch, sample), worker-independent; ranks
read disjoint parts of the global batch; exact resume of the position; bad files skipped the same way
every time (or an error with --strict); memory or stream chosen by size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hybridssl.data.training_set as training_set
from hybridssl.data.index import file_index
from hybridssl.data.sources import ImageSet
from hybridssl.data.streaming import CropDataset, StreamingLoader, StreamingSet, cut_crops
from hybridssl.data.views import Crop
from hybridssl.errors import DataError


def numbered_folder(root: Path, n: int = 24, classes: int = 3) -> Path:
    """Images whose red channel encodes their number (so a crop tells which file it came from) and
    whose green channel is a gradient (so different crops differ)."""
    for i in range(n):
        folder = root / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.full((30 + i, 40, 3), i * 10, dtype=np.uint8)
        pixels[..., 1] = np.linspace(0, 255, 40, dtype=np.uint8)[None, :] // 2 + np.linspace(0, 127, 30 + i, dtype=np.uint8)[:, None]
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


CROPS = [Crop(16, (0.2, 1.0)), Crop(16, (0.2, 1.0))]


def keys_of(loader: StreamingLoader) -> list[list[int]]:
    return [batch["ids"].tolist() for batch in loader]


def test_crops_come_from_the_full_image_and_depend_only_on_seed_epoch_and_sample():
    image = torch.arange(3 * 60 * 80, dtype=torch.float32).reshape(3, 60, 80).div(3 * 60 * 80 / 255).to(torch.uint8)
    a, b = cut_crops(image, CROPS, seed=5), cut_crops(image, CROPS, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and a[0].shape == (3, 16, 16)
    assert not torch.equal(a[0], a[1]), "two views, two draws"
    before = torch.get_rng_state()
    cut_crops(image, CROPS, seed=6)
    assert torch.equal(before, torch.get_rng_state()), "the process-wide generator does not move"


def test_a_sample_is_the_same_whichever_worker_decodes_it(tmp_path):
    index = file_index(numbered_folder(tmp_path / "d"))
    dataset = CropDataset(index, CROPS, channels=3, seed=1)
    one = [torch.cat([b["crops"][0], b["crops"][1]]) for b in StreamingLoader(dataset, 4, seed=1, num_workers=0)]
    two = [torch.cat([b["crops"][0], b["crops"][1]]) for b in StreamingLoader(dataset, 4, seed=1, num_workers=2)]
    assert len(one) == len(two) == 6 and all(torch.equal(x, y) for x, y in zip(one, two))
    assert not torch.equal(dataset[(0, 3)]["crops"][0], dataset[(1, 3)]["crops"][0]), "new draws each epoch"


def test_the_order_is_the_in_memory_loaders_and_ranks_read_disjoint_parts(tmp_path):
    from hybridssl.data.loader import InMemoryLoader

    index = file_index(numbered_folder(tmp_path / "d"))
    dataset = CropDataset(index, CROPS[:1], channels=3, seed=0)
    single = keys_of(StreamingLoader(dataset, 8, seed=4))
    stored = [b["ids"].tolist() for b in InMemoryLoader(torch.zeros(24, 1, 2, 2, dtype=torch.uint8), None, 8, seed=4)]
    assert single == stored
    ranks = [keys_of(StreamingLoader(dataset, 4, seed=4, rank=r, world_size=2)) for r in (0, 1)]
    for batch, (r0, r1) in zip(single, zip(*ranks)):
        assert set(r0).isdisjoint(r1) and sorted(r0 + r1) == sorted(batch) and r0 + r1 == batch
    # identical-views mode: every rank loads the global batch and keeps its own ids
    shared = StreamingLoader(dataset, 4, seed=4, rank=1, world_size=2, global_images=True)
    first = next(iter(shared))
    assert first["crops"][0].shape[0] == 8 and first["offset"] == 4 and first["ids"].tolist() == ranks[1][0]


def test_labels_travel_with_their_images(tmp_path):
    index = file_index(numbered_folder(tmp_path / "d"))
    for batch in StreamingLoader(CropDataset(index, [Crop(8, (1.0, 1.0), (4 / 3, 4 / 3))], 3, seed=0), 6, num_workers=0):
        numbers = (batch["crops"][0][:, 0].float().mean((1, 2)) / 10).round().long()
        assert torch.equal(batch["labels"], numbers % 3)
        assert torch.equal(torch.tensor([int(index.path(i).stem) for i in batch["ids"]]), numbers)


def test_resuming_mid_epoch_gives_the_same_batches_as_not_stopping(tmp_path):
    index = file_index(numbered_folder(tmp_path / "d"))
    dataset = CropDataset(index, CROPS, channels=3, seed=2)

    def run(loader: StreamingLoader, steps: int) -> list[torch.Tensor]:
        out = []
        while len(out) < steps:
            for batch in loader:
                out.append(batch["crops"][1])
                loader.advance()
                if len(out) == steps:
                    break
        return out

    straight = run(StreamingLoader(dataset, 8, seed=2, num_workers=2), 7)  # 3 batches per epoch: into epoch 3
    first = StreamingLoader(dataset, 8, seed=2, num_workers=2)
    head = run(first, 4)
    state = first.state_dict()
    resumed = StreamingLoader(dataset, 8, seed=2, num_workers=2)
    resumed.load_state_dict(state)
    tail = run(resumed, 3)
    assert all(torch.equal(a, b) for a, b in zip(straight, head + tail))


def test_bad_files_are_replaced_the_same_way_each_time_and_counted(tmp_path):
    root = numbered_folder(tmp_path / "d", n=12, classes=1)
    (root / "c0" / "000.png").write_bytes(b"")  # zero bytes
    (root / "c0" / "005.png").write_bytes((root / "c0" / "006.png").read_bytes()[:60])  # truncated
    (root / "c0" / "009.png").write_text("not an image at all")
    index = file_index(root)
    dataset = CropDataset(index, CROPS[:1], channels=3, seed=0)
    sample = dataset[(0, 0)]
    assert sample["id"] == 1 and len(sample["skipped"]) == 1 and "000.png" in sample["skipped"][0]
    loader = StreamingLoader(dataset, 4, seed=0, num_workers=2)
    with pytest.warns(UserWarning) as caught:
        first = keys_of(loader)
    messages = [str(w.message) for w in caught]
    assert any("epoch 0: skipped 3 unreadable image(s)" in m for m in messages)
    assert sum("skipping unreadable image" in m and "009.png" in m for m in messages) == 1, "each logged with its path"
    assert not {0, 5, 9} & {i for batch in first for i in batch}, "no bad file is ever trained on"
    again = StreamingLoader(dataset, 4, seed=0, num_workers=0)
    with pytest.warns(UserWarning):
        assert keys_of(again) == first, "the same replacements every time (so a resumed run matches)"
    strict = CropDataset(index, CROPS[:1], channels=3, seed=0, strict=True)
    assert "000.png" in strict[(0, 0)]["error"]
    with pytest.raises(DataError, match="unreadable image .*000.png"):
        keys_of(StreamingLoader(strict, 4, seed=0, num_workers=2))


def test_memory_or_stream_is_chosen_by_decoded_size_and_can_be_forced(tmp_path, monkeypatch):
    root = numbered_folder(tmp_path / "d", n=10)
    small = training_set.training_data("folder", root, image_size=16, channels=3)
    assert isinstance(small, ImageSet) and len(small) == 10
    monkeypatch.setattr(training_set, "MEMORY_BUDGET_BYTES", 10 * 3 * 16 * 16 - 1)
    large = training_set.training_data("folder", root, image_size=16, channels=3, num_workers=0)
    assert isinstance(large, StreamingSet) and len(large) == 10
    assert isinstance(training_set.training_data("folder", root, image_size=16, channels=3, loader="memory"), ImageSet)
    limited = training_set.training_data("folder", root, image_size=16, channels=3, limit=4, num_workers=0)
    assert len(limited) == 4
    info = training_set.training_info("folder", large)
    assert info.num_images == 10 and info.num_classes == 3 and len(info.mean) == 3
    means = np.array([i * 10 / 255 for i in range(10)])
    assert info.mean[0] == pytest.approx(float(np.average(means, weights=[30 + i for i in range(10)])), abs=0.03)
    with pytest.raises(Exception, match="stream"):
        training_set.training_data("fashion-mnist", None, image_size=28, channels=1, loader="stream")



def corrupt_png(path: Path, source: Path) -> Path:
    """`source`'s PNG with image data flipped and the chunk checksums made valid again: PIL's verify()
    passes it, and torchvision's decoder crashed the worker (segfault) on it."""
    from tests.data.test_decode import png_chunks, png_from_chunks

    data = bytearray(source.read_bytes())
    start = data.find(b"IDAT") + 8
    data[start : start + 32] = bytes(b ^ 0x5A for b in data[start : start + 32])
    path.write_bytes(png_from_chunks(png_chunks(bytes(data))))
    return path


def test_a_damaged_png_is_skipped_by_the_workers_never_a_crash(tmp_path):
    root = numbered_folder(tmp_path / "d", n=12, classes=1)
    corrupt_png(root / "c0" / "004.png", root / "c0" / "004.png")
    index = file_index(root)
    loader = StreamingLoader(CropDataset(index, CROPS[:1], channels=3, seed=0), 4, seed=0, num_workers=2)
    with pytest.warns(UserWarning) as caught:
        ids = [i for batch in keys_of(loader) for i in batch]
    assert 4 not in ids and len(ids) == 12
    assert any("skipping unreadable image" in str(w.message) and "004.png" in str(w.message) for w in caught)
    with pytest.raises(DataError, match="unreadable image .*004.png.*--strict"):
        keys_of(StreamingLoader(CropDataset(index, CROPS[:1], channels=3, seed=0, strict=True), 4, seed=0, num_workers=2))
    streamed = StreamingSet("folder", index, image_size=16, channels=3, num_workers=2)
    with pytest.warns(UserWarning, match="004.png"):
        assert len(streamed.materialize()) == 11


def test_a_file_list_whose_paths_are_all_missing_is_one_line(tmp_path):
    listed = tmp_path / "list.csv"
    listed.write_text("path,label\n/nowhere/a.png,cat\n/nowhere/b.png,dog\nc.png,cat\n")
    streamed = StreamingSet("folder", file_index(listed), image_size=16, channels=3, num_workers=0)
    with pytest.warns(UserWarning), pytest.raises(DataError, match=r"no readable images in .*: all 3 tried were unreadable; first: /nowhere/a.png: FileNotFoundError"):
        streamed.info  # noqa: B018 - the statistics are the first thing a streamed run reads
    with pytest.warns(UserWarning), pytest.raises(DataError, match="no readable images"):
        streamed.materialize()


def test_an_image_over_the_pixel_limit_is_skipped_naming_it_and_its_size(tmp_path, monkeypatch):
    from tests.data.test_decode import png_declaring

    root = numbered_folder(tmp_path / "d", n=6, classes=1)
    (root / "c0" / "002.png").write_bytes(png_declaring(30000, 30000))  # 2.7 GB decoded, a few hundred bytes stored
    index = file_index(root)
    expected = r"002.png: ImageTooLarge: 30000 x 30000 = 900,000,000 pixels, over the limit of 178,956,970 \(HYBRIDSSL_MAX_IMAGE_PIXELS\)"
    with pytest.warns(UserWarning, match=expected):
        assert 2 not in [i for b in keys_of(StreamingLoader(CropDataset(index, CROPS[:1], 3, seed=0), 3, num_workers=2)) for i in b]
    with pytest.warns(UserWarning, match=expected):
        assert len(training_set.decode_index(index, 16, 3)) == 5
    monkeypatch.setenv("HYBRIDSSL_MAX_IMAGE_PIXELS", "a lot")  # about every file: stops at once, not after 64 skips
    with pytest.raises(DataError, match="HYBRIDSSL_MAX_IMAGE_PIXELS='a lot'"):
        keys_of(StreamingLoader(CropDataset(index, CROPS[:1], 3, seed=0), 3, num_workers=2))
    with pytest.raises(DataError, match="HYBRIDSSL_MAX_IMAGE_PIXELS"):
        training_set.decode_index(index, 16, 3)


@pytest.mark.parametrize(
    ("node_cpus", "own_cpus", "ranks", "workers"),
    [
        (96, 96, 8, 8),  # torchrun, no binding: the node's 95 spare CPUs shared by 8 ranks, capped at 8
        (96, 12, 8, 8),  # SLURM per-task binding of 12 CPUs: its own 12 are not divided again
        (96, 4, 8, 3),  # SLURM --cpus-per-task 4: 3 workers and the main process on its 4 CPUs
        (16, 16, 8, 1),  # a small node with many ranks
        (2, 2, 1, 1),  # this kind of CI machine
    ],
)
def test_default_workers_fit_the_node_and_the_process_cpus(monkeypatch, node_cpus, own_cpus, ranks, workers):
    import hybridssl.data.streaming as streaming

    monkeypatch.setattr(streaming.os, "cpu_count", lambda: node_cpus)
    monkeypatch.setattr(streaming, "usable_cpus", lambda: own_cpus)
    assert streaming.default_workers(ranks) == workers
