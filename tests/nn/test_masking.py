import pytest
import torch

from hybridssl.nn.masking import block_mask, gather_tokens, no_mask, random_mask


@pytest.mark.parametrize("n,ratio", [(49, 0.75), (196, 0.75), (64, 0.5), (49, 0.0), (16, 0.99)])
def test_random_mask_ratio_and_round_trip(n, ratio):
    torch.manual_seed(0)
    m = random_mask(4, n, ratio)
    keep = max(1, int(n * (1 - ratio)))  # at least one patch stays visible
    assert m.ids_keep.shape == (4, keep)
    assert torch.all(m.mask.sum(1) == n - keep)
    # kept patches are exactly those with mask 0
    assert torch.all(torch.gather(m.mask, 1, m.ids_keep) == 0)
    # unshuffle round trip: [kept, removed] gathered with ids_restore gives the original order
    x = torch.randn(4, n, 3)
    ids_shuffle = torch.argsort(m.ids_restore, dim=1)
    shuffled = gather_tokens(x, ids_shuffle)
    assert torch.equal(gather_tokens(shuffled, m.ids_restore), x)
    assert torch.equal(shuffled[:, :keep], gather_tokens(x, m.ids_keep))


def test_masks_differ_per_sample():
    torch.manual_seed(0)
    m = random_mask(8, 49, 0.75)
    assert len({tuple(r.tolist()) for r in m.mask}) > 1


def test_block_mask_keeps_whole_2x2_units():
    torch.manual_seed(0)
    grid = 8
    m = block_mask(16, grid, 0.65)
    units = (grid // 2) ** 2
    keep_units = int(units * 0.35)
    assert torch.all(m.mask.sum(1) == grid * grid - 4 * keep_units)
    mask_grid = m.mask.view(16, grid, grid)
    blocks = mask_grid.view(16, grid // 2, 2, grid // 2, 2).permute(0, 1, 3, 2, 4).reshape(16, units, 4)
    assert torch.all((blocks.sum(-1) == 0) | (blocks.sum(-1) == 4)), "every 2x2 unit is all kept or all removed"
    assert torch.all(torch.gather(m.mask, 1, m.ids_keep) == 0)


def test_block_mask_on_an_odd_grid_keeps_whole_units_of_a_shifted_window():
    torch.manual_seed(0)
    batch, grid = 256, 7
    m = block_mask(batch, grid, 0.65)
    keep = 4 * int(49 / 4 * 0.35)  # 4 units = 16 patches
    assert keep == 16 and torch.all(m.mask.sum(1) == 49 - keep)
    assert torch.all(torch.gather(m.mask, 1, m.ids_keep) == 0)
    kept = (1 - m.mask).view(batch, grid, grid)
    origins = set()
    for b in range(batch):
        rows, cols = torch.nonzero(kept[b], as_tuple=True)
        # the kept patches form whole 2x2 blocks on a lattice shifted by the same (dy, dx) in {0, 1}
        dy, dx = int(rows.min()) % 2, int(cols.min()) % 2
        origins.add((dy, dx))
        blocks = {((r - dy) // 2, (c - dx) // 2) for r, c in zip(rows.tolist(), cols.tolist())}
        assert len(blocks) == 4, "16 kept patches in exactly 4 blocks"
        for by, bx in blocks:
            assert kept[b, dy + 2 * by : dy + 2 * by + 2, dx + 2 * bx : dx + 2 * bx + 2].sum() == 4
    assert origins == {(0, 0), (0, 1), (1, 0), (1, 1)}, "the window offset varies per image"
    assert kept.sum(0).min() > 0, "every patch is kept in some image"
    # the unshuffle round trip still holds
    x = torch.randn(batch, 49, 2)
    assert torch.equal(gather_tokens(gather_tokens(x, torch.argsort(m.ids_restore, dim=1)), m.ids_restore), x)


def test_block_mask_rejects_a_grid_smaller_than_a_unit_and_bad_ratios():
    with pytest.raises(ValueError, match="at least 2x2"):
        block_mask(2, 1, 0.65)
    with pytest.raises(ValueError, match="ratio"):
        block_mask(2, 8, 1.0)


def test_no_mask_is_identity():
    m = no_mask(2, 5)
    assert m.mask.sum() == 0 and torch.equal(m.ids_keep[0], torch.arange(5))


def test_random_mask_rejects_ratios_outside_0_1():
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="mask ratio must be in"):
            random_mask(2, 16, bad)


def test_block_mask_edges_ratio_zero_grid_of_one_unit_and_at_least_one_block():
    assert block_mask(2, 4, 0.0).ids_keep.shape == (2, 16), "ratio 0 keeps every block"
    assert block_mask(2, 2, 0.5).ids_keep.shape == (2, 4), "a grid of exactly one unit: that unit is kept"
    assert block_mask(2, 4, 0.95).ids_keep.shape == (2, 4), "at least one whole block is kept"


def test_block_mask_of_unit_one_keeps_every_patch_independently_of_its_neighbour():
    # unit 1 is a per-patch random mask: two neighbouring patches (edge rows and columns included) are
    # kept together as often as any two patches, C(14, 2) / C(16, 4) = 5% at 4 of 16 kept
    torch.manual_seed(0)
    m = block_mask(4000, 4, 0.75, unit=1)
    kept = (1 - m.mask).view(4000, 4, 4)
    for a, b in [((0, 1), (1, 1)), ((3, 1), (2, 1)), ((1, 0), (1, 1)), ((1, 3), (1, 2))]:
        together = (kept[:, a[0], a[1]] * kept[:, b[0], b[1]]).mean().item()
        assert together == pytest.approx(91 / 1820, abs=0.02), (a, b)
