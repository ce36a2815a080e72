import torch

from hybridssl.losses import masked_l1, masked_mse


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
