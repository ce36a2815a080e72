import math

import torch

from hybridssl.nn.pos_embed import sincos_1d, sincos_2d, sincos_scalar


def test_sincos_1d_matches_formula():
    dim = 8
    table = sincos_1d(dim, torch.tensor([0.0, 3.0]))
    for i in range(dim // 2):
        w = 1 / 10000 ** (i / (dim / 2))
        assert math.isclose(table[1, i].item(), math.sin(3 * w), abs_tol=1e-9)
        assert math.isclose(table[1, dim // 2 + i].item(), math.cos(3 * w), abs_tol=1e-9)
    assert torch.equal(table[0, : dim // 2], torch.zeros(dim // 2))


def test_sincos_2d_layout():
    dim, grid = 16, 3
    table = sincos_2d(dim, grid)
    assert table.shape == (1 + grid * grid, dim)
    assert torch.all(table[0] == 0), "CLS row carries no position"
    # patch (row 1, col 2) is index 1 + 1*3 + 2: first half encodes the column, second the row
    patch = table[1 + 1 * grid + 2]
    assert torch.allclose(patch[: dim // 2], sincos_1d(dim // 2, torch.tensor([2.0]))[0].float())
    assert torch.allclose(patch[dim // 2 :], sincos_1d(dim // 2, torch.tensor([1.0]))[0].float())


def test_sincos_scalar_shape_and_zero():
    emb = sincos_scalar(8, torch.tensor([0.0, 0.05]))
    assert emb.shape == (2, 8)
    assert torch.allclose(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))


def test_resample_grid_keeps_the_cls_row_and_matches_timm():
    from timm.layers import resample_abs_pos_embed

    from hybridssl.nn.pos_embed import resample_grid

    table = torch.randn(1, 1 + 14 * 14, 16)
    out = resample_grid(table, 7)
    assert out.shape == (1, 1 + 7 * 7, 16) and torch.equal(out[:, 0], table[:, 0])
    assert torch.equal(out, resample_abs_pos_embed(table, [7, 7], num_prefix_tokens=1))
    assert resample_grid(table[0], 7).shape == (50, 16) and torch.equal(resample_grid(table, 14), table)


def test_sincos_scalar_by_hand():
    # dim 6: three frequencies 10000^(-i/2) = 1, 0.01, 0.0001; [sin(v f) | cos(v f)]
    v = torch.tensor([2.0, -30.0])
    f = torch.tensor([1.0, 0.01, 0.0001])
    expected = torch.cat([torch.sin(v[:, None] * f), torch.cos(v[:, None] * f)], dim=1)
    assert torch.allclose(sincos_scalar(6, v), expected, atol=1e-6)
