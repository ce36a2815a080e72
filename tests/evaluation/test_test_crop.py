"""The test view of MAE's and timm's evaluations (`--test-crop-fraction`, timm's crop_pct): the centre of
a larger resize, on the test split only, in every data path, in the keys and in the exported classifier."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from torchvision.transforms.v2.functional import center_crop

from hybridssl.cli import main
from hybridssl.data.decode import decode_image, fit, read_image
from hybridssl.data.sources import DataInfo
from hybridssl.data.synthetic import photo
from hybridssl.errors import ConfigError
from hybridssl.evaluation.data import eval_split
from hybridssl.evaluation.run import EvalContext, EvalRequest, resolve_settings
from hybridssl.report.run_report import results_table


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory):
    """One 300 x 500 photo-like JPEG: crops and resizes of it differ visibly."""
    from PIL import Image

    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    Image.fromarray(photo(np.random.default_rng(0), 1, 4, (300, 500))).save(path, quality=95)
    return path


def timm_test_view(path, size, crop_pct):
    """timm's evaluation transform (resize the shorter side to size / crop_pct, centre crop), as uint8 levels."""
    from PIL import Image
    from timm.data import create_transform

    transform = create_transform(size, is_training=False, interpolation="bicubic", crop_pct=crop_pct, mean=(0, 0, 0), std=(1, 1, 1))
    with Image.open(path) as im:
        return transform(im.convert("RGB")) * 255


# 36: JPEG's 1/8 draft (37 px) is smaller than 36 / 0.875 = 41.1; 32: 36.6 rounds down (timm's floor), not up
@pytest.mark.parametrize("size", [64, 36, 32])
def test_both_decoders_give_timms_test_view(photo_file, size):
    timm_view = timm_test_view(photo_file, size, 0.875)
    streamed = fit(read_image(photo_file, 3), size, 0.875).float()  # torchvision on the full image (workers)
    stored = decode_image(photo_file, size, 3, 0.875).float()  # PIL, draft mode (the in-memory path)
    whole = fit(read_image(photo_file, 3), size).float()
    assert streamed.shape == stored.shape == (3, size, size)
    assert (streamed - timm_view).abs().mean() < 0.1, "timm's rounding (floor) and resize"
    # the same region; PIL's draft (DCT scaling) and resampling differ a little. Drafting to `size`
    # rather than to the resized side gives 2.3 at 36 px (37 px decoded, upscaled)
    assert (stored - timm_view).abs().mean() < 1.8
    assert (whole - timm_view).abs().mean() > 3, "the whole side is another view"
    full = read_image(photo_file, 3)
    assert torch.equal(fit(full, 224, 0.875), center_crop(fit(full, 256), [224, 224])), "MAE's 256 -> centre 224"


def test_pil_keeps_the_same_share_as_fit_when_size_over_fraction_is_fractional(tmp_path):
    """32 / 0.875 = 36.6: fit keeps 32/36 of the shorter side, so must PIL's bleed (not 0.875: 0.45 apart)."""
    from PIL import Image

    path = tmp_path / "photo.png"  # lossless: no draft, both decoders start from the same pixels
    Image.fromarray(photo(np.random.default_rng(0), 1, 4, (300, 500))).save(path)
    assert (decode_image(path, 32, 3, 0.875).float() - fit(read_image(path, 3), 32, 0.875).float()).abs().mean() < 0.05


def test_stored_and_streamed_folder_splits_get_the_same_centre(photo_root):
    info = DataInfo("folder", 32, 3, (0.5,) * 3, (0.25,) * 3, 4)
    split = {"info": info, "num_workers": 0}
    stored = eval_split("folder", "test", photo_root, None, loader="memory", crop_fraction=0.5, **split)
    streamed = eval_split("folder", "test", photo_root, None, loader="stream", crop_fraction=0.5, **split).materialize()
    whole = eval_split("folder", "test", photo_root, None, loader="memory", **split)
    assert (stored.images.float() - streamed.images.float()).abs().mean() < 3
    assert (stored.images.float() - whole.images.float()).abs().mean() > 10


def contexts(tiny_mae_run, fmnist_dir, tmp_path, **request):
    req = EvalRequest(checkpoint=tiny_mae_run / "checkpoints" / "last.ckpt", dataset=None, protocol="knn", output=tmp_path,
                      data_dir=fmnist_dir, limit_train=64, limit_test=32, **request)  # fmt: skip
    return EvalContext(req), EvalContext(replace(req, test_crop_fraction=0.875))


@pytest.mark.parametrize("split", ["test", "validation"])
def test_only_the_test_split_is_cropped_and_the_key_says_so(tiny_mae_run, fmnist_dir, tmp_path, split):
    whole, cropped = contexts(tiny_mae_run, fmnist_dir, tmp_path, split=split)
    assert torch.equal(cropped.train.images, whole.train.images), "train images (fine-tune crops, probe features) stay whole"
    assert torch.equal(cropped.test.images, fit(whole.test.images, 28, 0.875))  # 28 px -> 32, centre 28
    assert not torch.equal(cropped.test.images, whole.test.images)
    settings = resolve_settings(whole.req, ["knn"])
    assert cropped.measurement("knn", settings) != whole.measurement("knn", settings)
    assert "test_crop_fraction" not in whole.identity(), "keys measured before the setting stay valid"


def test_cli_records_the_view_and_the_classifier_carries_it(tiny_mae_run, fmnist_dir, tmp_path, capsys):
    from safetensors import safe_open

    ckpt = str(tiny_mae_run / "checkpoints" / "last.ckpt")
    common = ["evaluate", "--checkpoint", ckpt, "--data-dir", str(fmnist_dir), "--limit-train", "64", "--limit-test", "32", "--output", str(tmp_path)]
    assert main([*common, "--protocol", "knn", "--k", "5"]) == 0
    assert main([*common, "--protocol", "knn", "--k", "5", "--test-crop-fraction", "0.875"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["test_crop_fraction"] for r in rows] == [1.0, 0.875], "measured anew, and said in every record"
    table = str(results_table(rows))
    assert table.count("<td>centre 0.875</td>") == 1 and table.count("<td>whole</td>") == 1, "the run report says which row saw the centre"
    assert main([*common, "--protocol", "finetune", "--epochs", "1", "--test-crop-fraction", "0.875"]) == 0
    weights = json.loads((tmp_path / "results.jsonl").read_text().splitlines()[-1])["settings"]["weights"]
    with safe_open(tmp_path / weights, "pt") as f:
        assert json.loads(f.metadata()["pretrained_cfg"])["crop_pct"] == 0.875


@pytest.mark.parametrize("bad", ["0", "1.5"])
def test_a_fraction_outside_0_1_is_refused_naming_the_setting(tiny_mae_run, fmnist_dir, tmp_path, capsys, bad):
    ckpt = str(tiny_mae_run / "checkpoints" / "last.ckpt")
    assert main(["evaluate", "--checkpoint", ckpt, "--data-dir", str(fmnist_dir), "--protocol", "knn", "--output", str(tmp_path),
                 "--test-crop-fraction", bad]) != 0  # fmt: skip
    assert "test_crop_fraction" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="test_crop_fraction"):  # API callers (compare builds one before training)
        EvalRequest(checkpoint=tiny_mae_run / "checkpoints" / "last.ckpt", dataset=None, protocol="knn", output=tmp_path,
                    test_crop_fraction=float(bad))  # fmt: skip


@pytest.mark.parametrize("split", ["test", "validation"])
def test_a_streamed_folder_crops_its_test_images_from_the_files_for_every_reader(tiny_mae_run, photo_root, tmp_path, split):
    from hybridssl.data.streaming import StreamingSet
    from hybridssl.evaluation.data import features_and_labels
    from hybridssl.evaluation.finetune import test_batches

    req = EvalRequest(checkpoint=tiny_mae_run / "checkpoints" / "last.ckpt", dataset="folder", protocol="knn", output=tmp_path,
                      data_dir=photo_root, split=split, num_workers=0, loader="stream", test_crop_fraction=0.5)  # fmt: skip
    streamed, stored, whole = EvalContext(req), EvalContext(replace(req, loader="memory")), EvalContext(replace(req, test_crop_fraction=1.0))
    assert isinstance(streamed.test, StreamingSet) and isinstance(streamed.train, StreamingSet)
    assert streamed.train.crop_fraction == 1.0

    def pixels(ctx):  # the probes' reader: features batch by batch
        return features_and_labels(None, ctx.test, ctx.info, "none", torch.device("cpu"))[0]

    def gap(a, b):
        return (a - b).abs().mean().item()

    assert gap(pixels(streamed), pixels(whole)) > 0.05  # normalized pixels; 0.11 measured
    finetune_images = torch.cat([images for images, _ in test_batches(streamed.test, 16)])  # the fine-tune's reader
    settings = resolve_settings(req, ["knn"])
    if split == "test":
        assert gap(pixels(streamed), pixels(stored)) < gap(pixels(streamed), pixels(whole)) / 5  # 0.014 vs 0.11
        assert gap(finetune_images.float(), stored.test.images.float()) < 3
    else:  # the held-out share: from the files when streamed, from the stored 28 px images otherwise
        assert streamed.measurement("knn", settings) != stored.measurement("knn", settings)
        assert gap(finetune_images.float(), whole.test.materialize().images.float()) > 5  # 9.8 measured


def test_compare_passes_the_view_on_and_its_command_repeats_it(tmp_path, monkeypatch):
    import hybridssl.compare

    seen = []
    monkeypatch.setattr(hybridssl.compare, "compare", lambda req: seen.append(req) or {})
    assert main(["compare", "--methods", "mae", "--budget-epochs", "1", "--test-crop-fraction", "0.875", "--output", str(tmp_path)]) == 0
    assert seen[0].eval["test_crop_fraction"] == 0.875 and "--test-crop-fraction 0.875" in seen[0].command()
    assert main(["compare", "--methods", "mae", "--budget-epochs", "1", "--output", str(tmp_path)]) == 0
    assert "--test-crop-fraction" not in seen[1].command()
