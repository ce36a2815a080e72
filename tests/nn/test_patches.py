import torch

from hybridssl.nn.patches import normalize_patches, patchify, unpatchify


def test_patchify_unpatchify_inverse():
    x = torch.randn(2, 3, 32, 32)
    p = patchify(x, 4)
    assert p.shape == (2, 64, 48)
    assert torch.equal(unpatchify(p, 4, 3, 32), x)


def test_patch_order_row_major_channels_last():
    x = torch.arange(2 * 4 * 4, dtype=torch.float).view(1, 2, 4, 4)
    p = patchify(x, 2)
    # patch 1 is the top-right 2x2 block; its first values are pixel (0,2) of channel 0 then channel 1
    assert p[0, 1, 0] == x[0, 0, 0, 2] and p[0, 1, 1] == x[0, 1, 0, 2]
    assert p[0, 2, 0] == x[0, 0, 2, 0]


def test_norm_pix_zero_mean_unit_var():
    p = torch.randn(2, 5, 16) * 3 + 7
    n = normalize_patches(p)
    assert torch.allclose(n.mean(-1), torch.zeros(2, 5), atol=1e-5)
    assert torch.allclose(n.var(-1), torch.ones(2, 5), atol=1e-3)


def test_unpatchify_a_wide_image():
    x = torch.randn(2, 3, 8, 12)
    assert torch.equal(unpatchify(patchify(x, 4), 4, 3, 8, 12), x)


def test_patchify_refuses_a_side_that_is_not_whole_patches_and_raw_targets_are_the_patches():
    import pytest

    from hybridssl.nn.patches import pixel_target

    for shape in [(1, 1, 8, 10), (1, 1, 10, 8)]:
        with pytest.raises(ValueError, match=r"is not divisible by patch size 4"):
            patchify(torch.randn(shape), 4)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(pixel_target(x, 4, norm_pix=False), patchify(x, 4))
