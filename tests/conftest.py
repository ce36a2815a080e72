"""Fixtures that build small datasets in the real on-disk formats."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from tests import extra_methods  # noqa: F401  (registers the test-only methods before collection)


def toy_images(n: int, size: int = 28, channels: int = 1, num_classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class c draws a bright bar at a class-specific row band on noise: learnable, cheap."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, size, size, channels), dtype=np.uint8)
    band = max(1, size // num_classes)
    for i, c in enumerate(labels):
        images[i, c * band : c * band + band, :, :] = 230
    return images, labels.astype(np.uint8)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="session")
def fmnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Fashion-MNIST-format folder (IDX .gz) with 512 train and 128 test toy images."""
    root = tmp_path_factory.mktemp("fmnist")
    for prefix, n, seed in (("train", 512, 0), ("t10k", 128, 1)):
        images, labels = toy_images(n, seed=seed)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images[..., 0])
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture(autouse=True)
def _cpu_threads() -> None:
    torch.set_num_threads(2)


def pretrain_tiny(fmnist_dir: Path, output: Path, method: str = "mae", steps: int = 2, *extra: str) -> Path:
    """A few CPU steps of `method` on the fixture; returns the run folder (checkpoints/last.ckpt inside)."""
    from hybridssl.cli import main

    args = ["pretrain", "--method", method, "--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir), "--model", "vit-pico",
            "--batch-size", "32", "--max-steps", str(steps), "--accelerator", "cpu", "--no-progress-bar",
            "--output", str(output), "--set", "log_every_n_steps=1", *extra]  # fmt: skip
    assert main(args) == 0
    return output


@pytest.fixture(scope="session")
def tiny_mae_run(fmnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-step MAE run on the fixture: config.yaml, checkpoints/last.ckpt, logs (do not write into it)."""
    return pretrain_tiny(fmnist_dir, tmp_path_factory.mktemp("tiny-mae"), "mae", 4)


@pytest.fixture(scope="session")
def photo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A train/ + val/ root of 96 small photo-like JPEGs (48-64 px), 4 classes (hybridssl.data.synthetic)."""
    from hybridssl.data.synthetic import write_photo_folder

    return write_photo_folder(tmp_path_factory.mktemp("photos"), 96, num_classes=4, sizes=(48, 64), val_fraction=0.25)


@pytest.fixture(autouse=True)
def _index_cache_per_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """File indexes are cached under the test's own folder, never in the user's cache."""
    monkeypatch.setenv("HYBRIDSSL_INDEX_DIR", str(tmp_path / "index-cache"))


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and do not suffer from a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
