import pytest
import torch
import torch.nn.functional as F

from hybridssl.nn.batch_random import shared_stream
from tests.methods.toy import batch, build


def pixel_mask(mask: torch.Tensor, patch: int = 4, grid: int = 7) -> torch.Tensor:
    """B x N patch mask -> B x 1 x H x W pixel mask."""
    return mask.view(-1, 1, grid, grid).repeat_interleave(patch, 2).repeat_interleave(patch, 3)


def test_loss_is_the_norm_pix_mse_of_the_removed_patches_only():
    m = build("mae").train()
    b = batch(m, 8)
    x = b.views[0]
    with shared_stream(3):
        loss = m(b)["loss"]
    with shared_stream(3), torch.no_grad():
        pred, mask = m.reconstruct(x)
    removed = mask.mask.bool()
    assert removed.sum(dim=1).eq(49 - 12).all()  # 75% of a 7x7 grid: int(49 x 0.25) = 12 kept
    patches = F.unfold(x, 4, stride=4).transpose(1, 2)  # one channel: the same order as MAE's (p, p, C)
    target = (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6).sqrt()
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    assert loss.item() == pytest.approx(per_patch[removed].mean().item(), rel=1e-5)
    assert abs(per_patch[~removed].mean().item() - loss.item()) > 0.01  # the visible patches' error differs
    raw = ((pred - patches) ** 2).mean(dim=-1)[removed].mean()
    assert abs(raw.item() - loss.item()) > 0.01  # and so does the target without per-patch normalization


def test_the_encoder_sees_the_kept_patches_and_only_them():
    m = build("mae").eval()
    x = batch(m, 8).views[0]
    with shared_stream(3), torch.no_grad():
        pred, mask = m.reconstruct(x)
    hidden = pixel_mask(mask.mask).bool()
    changed_removed = torch.where(hidden, torch.randn_like(x), x)
    changed_kept = torch.where(hidden, x, torch.randn_like(x))
    with shared_stream(3), torch.no_grad():
        same, mask_again = m.reconstruct(changed_removed)
        other, _ = m.reconstruct(changed_kept)
    assert torch.equal(mask.mask, mask_again.mask)
    assert torch.allclose(same, pred, atol=1e-6)  # the removed pixels never reach the model
    assert (other - pred).abs().max() > 1e-3  # the kept ones do



def test_one_view_cropped_at_the_configured_scale():
    method = build("mae", crop_scale=(0.5, 0.9))
    assert len(method.views) == 1 and tuple(method.views.crops[0].scale) == (0.5, 0.9)
