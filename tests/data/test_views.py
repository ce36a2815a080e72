import pytest
import torch

from hybridssl.data.sources import DataInfo
from hybridssl.data.views import PixelShiftPair, crop_flip, default_max_shift, identity, strong_weak, to_unit

INFO = DataInfo("toy", 28, 1, (0.5,), (0.25,), 10)


def test_crop_flip_shapes_and_normalization():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    views = crop_flip(INFO, num_views=2, scale=(0.08, 1.0))(images)
    assert len(views) == 2 and all(v.shape == (8, 1, 28, 28) and v.dtype == torch.float32 for v in views)
    assert not torch.equal(views[0], views[1]), "views are drawn independently"
    lo, hi = (0 - 0.5) / 0.25, (1 - 0.5) / 0.25
    assert views[0].min() >= lo - 1e-5 and views[0].max() <= hi + 1e-5


def test_views_are_per_sample_random():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (1, 1, 28, 28), dtype=torch.uint8).expand(4, -1, -1, -1)
    (v,) = crop_flip(INFO, 1)(images)
    assert len({tuple(x.flatten()[:50].tolist()) for x in v}) > 1


def test_identity_view_is_the_normalized_image():
    images = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    (v,) = identity(INFO)(images)
    assert torch.allclose(v, torch.full_like(v, 2.0))


def test_default_pixel_shift_scales_with_the_image():
    assert [default_max_shift(s) for s in (224, 32, 28, 64)] == [31, 4, 4, 9]


def test_pixel_shift_pair_online_at_origin_target_at_offsets_in_bounds():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    pair = PixelShiftPair(INFO)
    assert pair.max_shift == 4 and len(pair) == 2
    pair.target_colour = torch.nn.Identity()  # isolate the geometry
    torch.manual_seed(1)
    master = pair.device_crops[0](to_unit(images)).clamp_(0, 1)
    assert master.shape[-1] == 28 + 4 + 1
    torch.manual_seed(1)
    online, target, offsets = pair.with_offsets(images)
    assert online.shape == target.shape == (64, 1, 28, 28)
    assert offsets.min() >= 0 and offsets.max() <= 4 and len(offsets.unique()) == 5, "offsets cover {0..4}"
    assert torch.allclose(online, pair.normalize(master[:, :, :28, :28]))
    for b, (dy, dx) in enumerate(offsets.tolist()):
        assert torch.allclose(target[b], pair.normalize(master[b : b + 1, :, dy : dy + 28, dx : dx + 28])[0])


def test_pixel_shift_pair_colour_goes_to_the_target_only():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8)
    pair = PixelShiftPair(INFO, max_shift=0)  # no shift: any difference is colour
    online, target = pair(images)
    changed = (online - target).flatten(1).abs().amax(1) > 1e-4
    assert 0 < changed.sum() < 32, "jitter p 0.8 changes most targets but not all"
    with pytest.raises(ValueError, match="max_shift"):
        PixelShiftPair(INFO, max_shift=-1)


def test_strong_weak_clean_view_is_the_strong_crop_before_colour():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8)
    views = strong_weak(INFO, clean_strong=True)
    assert len(views) == 3 and len(strong_weak(INFO)) == 2
    torch.manual_seed(5)
    strong, weak, clean = views(images)
    torch.manual_seed(5)
    crop = views.device_crops[0](to_unit(images)).clamp_(0, 1)
    assert torch.allclose(clean, views.normalize(crop)), "same geometry, no colour"
    assert not torch.allclose(strong, clean) and not torch.allclose(weak, clean)
    assert len(strong_weak(INFO)(images)) == 2
