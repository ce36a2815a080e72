import torch

from hybridssl.data.sources import DataInfo
from hybridssl.data.views import crop_flip, identity

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
