"""A folder's training resolution comes from its images when the run does not set one."""

import pytest
import yaml
from PIL import Image

from hybridssl.cli import main
from hybridssl.data.index import file_index
from hybridssl.data.synthetic import write_photo_folder
from hybridssl.data.training_set import training_data, typical_side
from hybridssl.nn.vit import default_image_size, default_patch_size


@pytest.mark.parametrize(("side", "size", "tokens"), [
    (28, 28, 49), (32, 32, 64), (40, 40, 25), (64, 64, 64), (100, 96, 144), (150, 144, 81), (300, 224, 196),
    (8, 16, 16), (4000, 224, 196),
])  # fmt: skip
def test_default_size_keeps_small_images_small_and_caps_photos_at_224(side, size, tokens):
    assert default_image_size(side) == size
    assert (size // default_patch_size(size)) ** 2 == tokens


def test_typical_side_is_the_median_shorter_side_and_skips_unreadable_files(tmp_path):
    for i, (w, h) in enumerate([(30, 40), (50, 20), (64, 64), (36, 99), (90, 35)]):
        Image.new("RGB", (w, h), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert typical_side(file_index(tmp_path)) == 35  # shorter sides 30, 20, 64, 36, 35 -> median 35


def test_a_folder_trains_at_its_images_size_and_the_run_records_it(tmp_path):
    root = write_photo_folder(tmp_path / "small", 40, layout="flat", sizes=(32, 32))
    data = training_data("folder", root, image_size=None, channels=3)
    assert data.images.shape[-1] == 32  # in memory: decoded at the chosen size
    out = tmp_path / "run"
    assert main(["pretrain", "--method", "mae", "--dataset", "folder", "--data-dir", str(root), "--batch-size", "8", "--max-steps", "1",
                 "--no-progress-bar", "--output", str(out)]) == 0  # fmt: skip
    assert yaml.safe_load((out / "config.yaml").read_text())["image_size"] == 32
    photos = training_data("folder", write_photo_folder(tmp_path / "photos", 4, layout="flat"), image_size=None, channels=3)
    assert photos.images.shape[-1] == 224  # 300-500 px photos
