import pytest
import torch

from hybridssl.losses import masked_l1, masked_mse, noise_mse


def test_masked_mse_hand_computed():
    pred = torch.tensor([[[1.0, 2.0], [0.0, 0.0], [3.0, 3.0]]])  # 1 image, 3 patches, 2 values
    target = torch.tensor([[[0.0, 0.0], [5.0, 5.0], [1.0, 1.0]]])
    mask = torch.tensor([[1.0, 0.0, 1.0]])  # patch 1 kept: not in the loss
    # per patch: (1 + 4) / 2 = 2.5 and (4 + 4) / 2 = 4 -> mean over removed = 3.25
    assert torch.isclose(masked_mse(pred, target, mask), torch.tensor(3.25))


def test_masked_mse_averages_over_all_removed_patches_of_the_batch():
    pred = torch.zeros(2, 2, 1)
    target = torch.tensor([[[1.0], [0.0]], [[3.0], [5.0]]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # removed patches: 1, 9, 25 -> 35 / 3 (not the mean of per-image means)
    assert torch.isclose(masked_mse(pred, target, mask), torch.tensor(35 / 3))


def test_masked_l1_hand_computed():
    pred = torch.tensor([[[1.0, -1.0], [2.0, 2.0]]])
    target = torch.zeros(1, 2, 2)
    assert torch.isclose(masked_l1(pred, target, torch.tensor([[1.0, 1.0]])), torch.tensor(1.5))


def test_noise_mse_counts_visible_patches_only_and_normalizes_per_patch():
    torch.manual_seed(0)
    noise = 0.03 * torch.randn(2, 4, 6)
    mask = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0]])  # 3 visible patches
    pred = torch.randn(2, 4, 6)
    raw = noise_mse(pred, noise, mask, normalize=False)
    by_hand = sum(((pred[b, n] - noise[b, n]) ** 2).mean() for b, n in [(0, 1), (0, 2), (1, 0)]) / 3
    assert raw.item() == pytest.approx(by_hand.item(), rel=1e-6)
    # predictions at removed positions do not matter
    moved = pred.clone()
    moved[mask.bool()] += 100.0
    assert noise_mse(moved, noise, mask, normalize=False).item() == pytest.approx(raw.item(), rel=1e-6)
    # normalized: the target is each patch standardized (unbiased var, eps 1e-6), whatever the noise scale
    target = (noise - noise.mean(-1, keepdim=True)) / (noise.var(-1, keepdim=True) + 1e-6).sqrt()
    assert noise_mse(target, noise, mask).item() == pytest.approx(0.0, abs=1e-10)
    assert noise_mse(target, 10 * noise, mask).item() == pytest.approx(0.0, abs=1e-4)


def test_masked_losses_over_one_removed_patch_and_over_none():
    pred = torch.tensor([[[2.0, 2.0], [7.0, 7.0]]])
    target = torch.zeros(1, 2, 2)
    one = torch.tensor([[1.0, 0.0]])
    assert masked_mse(pred, target, one).item() == 4.0 and masked_l1(pred, target, one).item() == 2.0
    none = torch.zeros(1, 2)  # nothing removed: zero, not 0 / 0
    assert masked_mse(pred, target, none).item() == 0.0 and masked_l1(pred, target, none).item() == 0.0
