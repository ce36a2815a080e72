import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hybridssl.data import sources
from hybridssl.data.sources import DataError, data_info, load_dataset, read_idx
from tests.conftest import toy_images, write_idx


def test_fashion_mnist_idx(fmnist_dir):
    train = load_dataset("fashion-mnist", "train", fmnist_dir)
    test = load_dataset("fashion-mnist", "test", fmnist_dir)
    assert train.images.shape == (512, 1, 28, 28) and train.images.dtype == torch.uint8
    assert len(test) == 128 and test.labels.dtype == torch.int64
    assert train.classes[0] == "T-shirt/top" and train.num_classes == 10
    info = data_info("fashion-mnist", train)
    assert (info.image_size, info.channels, info.mean) == (28, 1, (0.2860,))


def test_fashion_mnist_search_order_and_error(tmp_path, monkeypatch, fmnist_dir):
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    monkeypatch.setattr(sources, "CACHE_DIR", tmp_path / "no-cache")
    monkeypatch.setenv("HYBRIDSSL_DATA", str(fmnist_dir))
    assert len(load_dataset("fashion-mnist", "test")) == 128  # found through $HYBRIDSSL_DATA
    monkeypatch.delenv("HYBRIDSSL_DATA")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", "train", tmp_path / "empty")
    message = str(err.value)
    for place in ("empty", "no-debian", "no-cache", "--download", "dataset-fashion-mnist"):
        assert place in message


def test_truncated_idx_is_reported(tmp_path):
    images, _ = toy_images(4)
    write_idx(tmp_path / "x.gz", images[..., 0])
    raw = (tmp_path / "x.gz").read_bytes()
    import gzip

    data = gzip.decompress(raw)[:-10]
    (tmp_path / "t.gz").write_bytes(gzip.compress(data))
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "t.gz")


def write_cifar(root: Path, name: str, n: int = 20) -> None:
    images, labels = toy_images(n, size=32, channels=3)
    flat = images.transpose(0, 3, 1, 2).reshape(n, -1)  # R plane, G plane, B plane per row
    if name == "cifar10":
        folder, label_key = root / "cifar-10-batches-py", "labels"
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        meta, meta_file = {"label_names": [f"c{i}" for i in range(10)]}, "batches.meta"
    else:
        folder, label_key = root / "cifar-100-python", "fine_labels"
        files, meta, meta_file = ["train", "test"], {"fine_label_names": [f"c{i}" for i in range(100)]}, "meta"
    folder.mkdir(parents=True)
    for f in files:
        with open(folder / f, "wb") as fh:
            pickle.dump({"data": flat, label_key: labels.tolist()}, fh)
    with open(folder / meta_file, "wb") as fh:
        pickle.dump(meta, fh)


@pytest.mark.parametrize("name,train_n", [("cifar10", 100), ("cifar100", 20)])
def test_cifar_pickled_batches(tmp_path, name, train_n):
    write_cifar(tmp_path, name)
    train = load_dataset(name, "train", tmp_path)
    test = load_dataset(name, "test", tmp_path)
    assert train.images.shape == (train_n, 3, 32, 32) and len(test) == 20
    images, labels = toy_images(20, size=32, channels=3)
    assert torch.equal(test.images[0], torch.from_numpy(images[0]).permute(2, 0, 1))
    assert test.labels.tolist() == labels.tolist()
    with pytest.raises(DataError, match="missing does not exist"):
        load_dataset(name, "train", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not found"):
        load_dataset(name, "train", tmp_path / "empty")


def test_stl10_binary(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    n = 6
    images, labels = toy_images(n, size=96, channels=3)
    column_major = images.transpose(0, 3, 2, 1)  # STL-10 stores each channel column-major
    for split in ("train", "test"):
        column_major.tofile(folder / f"{split}_X.bin")
        (labels.astype(np.uint8) + 1).tofile(folder / f"{split}_y.bin")
    column_major.tofile(folder / "unlabeled_X.bin")
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)))
    train = load_dataset("stl10", "train", tmp_path)
    assert train.images.shape == (n, 3, 96, 96)
    assert torch.equal(train.images[1], torch.from_numpy(images[1]).permute(2, 0, 1))
    assert train.labels.tolist() == labels.tolist()
    both = load_dataset("stl10", "train+unlabeled", tmp_path)
    assert len(both) == 2 * n and (both.labels[n:] == -1).all()


def save(path: Path, image: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kw)
    return path


def test_folder_with_classes_and_unusual_images(tmp_path):
    rgb = Image.new("RGB", (40, 30), (200, 10, 10))
    save(tmp_path / "cat" / "a.png", rgb)
    save(tmp_path / "cat" / "cmyk.jpg", rgb.convert("CMYK"))
    save(tmp_path / "cat" / "rgba.png", Image.new("RGBA", (16, 16), (0, 255, 0, 128)))
    save(tmp_path / "dog" / "palette.png", rgb.convert("P"))
    save(tmp_path / "dog" / "deep.png", Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)))
    save(tmp_path / "dog" / "tiny.png", Image.new("L", (1, 1), 7))
    save(tmp_path / "dog" / "wide.png", Image.new("RGB", (200, 3), (1, 2, 3)))
    ds = load_dataset("folder", "train", tmp_path, image_size=16, channels=3)
    assert ds.images.shape == (7, 3, 16, 16) and ds.classes == ["cat", "dog"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    grey = load_dataset("folder", "train", tmp_path, image_size=8, channels=1)
    assert grey.images.shape == (7, 1, 8, 8)


def test_flat_folder_is_unlabelled(tmp_path):
    for i in range(3):
        save(tmp_path / f"{i}.png", Image.new("RGB", (20, 20), (i, i, i)))
    ds = load_dataset("folder", "train", tmp_path, image_size=8)
    assert ds.labels is None and len(ds) == 3


def test_unreadable_images_are_skipped_with_their_path(tmp_path):
    save(tmp_path / "ok.png", Image.new("RGB", (20, 20)))
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    good = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    with pytest.warns(UserWarning) as record:
        ds = load_dataset("folder", "train", tmp_path, image_size=8)
    messages = " ".join(str(w.message) for w in record)
    assert len(ds) == 1 and len(ds.skipped) == 3
    for name in ("empty.png", "text.jpg", "truncated.png", "skipped 3 of 4"):
        assert name in messages
    with pytest.raises(DataError, match="unreadable"):
        load_dataset("folder", "train", tmp_path, image_size=8, strict=True)


def test_missing_or_empty_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("folder", "train", tmp_path / "nope")
    with pytest.raises(DataError, match="no images"):
        load_dataset("folder", "train", tmp_path)
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("imagenet-1k", "train", tmp_path)


def test_take_is_seeded_subset(fmnist_dir):
    ds = load_dataset("fashion-mnist", "train", fmnist_dir)
    a, b = ds.take(50, seed=3), ds.take(50, seed=3)
    assert torch.equal(a.images, b.images) and len(a) == 50
    assert not torch.equal(a.images, ds.take(50, seed=4).images)
