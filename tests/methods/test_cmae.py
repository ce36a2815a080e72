"""CMAE mechanics: pixel-shift views, block masks, the pre-norm no-grad target, losses, EMA."""

import pytest
import torch
import torch.nn.functional as F

from hybridssl.config import ConfigError
from hybridssl.data.views import PixelShiftPair
from hybridssl.nn.patches import pixel_target
from tests.methods.toy import WIDTH, Capture, batch, build


def test_views_are_a_pixel_shift_pair_scaled_to_the_image():
    method = build("cmae")
    assert isinstance(method.views, PixelShiftPair) and method.views.max_shift == 4
    assert build("cmae", max_shift=2).views.max_shift == 2


def test_online_mask_keeps_whole_2x2_blocks_on_the_7x7_grid():
    method = build("cmae")
    mask = method.online_mask(32, torch.device("cpu"))
    assert torch.all(mask.mask.sum(1) == 49 - 16)
    kept = (1 - mask.mask).view(32, 7, 7)
    for b in range(32):
        rows, cols = torch.nonzero(kept[b], as_tuple=True)
        dy, dx = int(rows.min()) % 2, int(cols.min()) % 2
        assert torch.all((rows - dy) % 2 < 2) and kept[b].sum() == 16
        for r, c in zip(rows.tolist(), cols.tolist()):  # every kept patch sits in a fully kept block
            top, left = r - (r - dy) % 2, c - (c - dx) % 2
            assert kept[b, top : top + 2, left : left + 2].sum() == 4
    random = build("cmae", mask="random", mask_ratio=0.75).online_mask(4, torch.device("cpu"))
    assert torch.all(random.mask.sum(1) == 49 - int(49 * 0.25))


def test_target_features_are_pre_norm_mean_patch_tokens_of_the_frozen_copy():
    method = build("cmae")
    x = torch.randn(4, 1, 28, 28)
    features = method.target_features(x)
    encoder = method.target_encoder.module
    tokens = encoder.patch_embed(x) + encoder.pos_embed[:, 1:]
    cls = (encoder.cls_token + encoder.pos_embed[:, :1]).expand(4, -1, -1)
    hidden = encoder.blocks(torch.cat([cls, tokens], dim=1))  # no final LayerNorm
    assert torch.allclose(features, hidden[:, 1:].mean(1), atol=1e-5)
    assert not torch.allclose(features, encoder.norm(hidden)[:, 1:].mean(1), atol=1e-3)
    assert not any(p.requires_grad for p in method.target_encoder.parameters())


def test_feature_decoder_output_matches_the_encoder_width():
    method = build("cmae")
    assert method.feature_decoder.head.out_features == method.encoder.embed_dim == WIDTH
    assert len(method.feature_decoder.blocks) == 2 and len(method.pixel_decoder.blocks) == 4
    assert method.projector[0].in_features == method.target_projector.module[0].in_features == WIDTH


def test_losses_by_hand_from_the_branch_outputs():
    method = build("cmae")
    b = batch(method)
    encoder_in, pixels, predictor, target_proj = (
        Capture(m) for m in (method.encoder, method.pixel_decoder, method.predictor, method.target_projector.module)
    )
    out = method(b)
    (online, ids_keep), _ = encoder_in.calls[0]
    assert torch.equal(online, b.views[0]), "the online branch sees the (0, 0) crop"
    mask = torch.ones(16, 49).scatter_(1, ids_keep, 0.0)
    target = pixel_target(b.views[0], 4, norm_pix=True)
    per_patch = (pixels.calls[0][1] - target).pow(2).mean(-1)
    assert out["reconstruction"].item() == pytest.approx(((per_patch * mask).sum() / mask.sum()).item(), rel=1e-5)
    # one direction: online predictions against the target projections, x 2 tau
    p, k = F.normalize(predictor.calls[0][1], dim=1), F.normalize(target_proj.calls[0][1], dim=1)
    ce = F.cross_entropy(p @ k.T / 0.07, torch.arange(16))
    assert out["contrastive"].item() == pytest.approx((0.14 * ce).item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx((out["reconstruction"] + out["contrastive"]).item(), rel=1e-6)


def test_reconstruction_gradient_only_at_removed_patches():
    method = build("cmae")
    pixels = Capture(method.pixel_decoder)
    encoder_in = Capture(method.encoder)
    out = method(batch(method))
    pred = pixels.calls[0][1]
    (grad,) = torch.autograd.grad(out["reconstruction"], pred)
    removed = torch.ones(16, 49).scatter_(1, encoder_in.calls[0][0][1], 0.0).bool()
    assert torch.equal(grad.abs().sum(-1) > 0, removed), "gradient at exactly the removed patches"


def test_gradients_reach_online_parts_and_an_optimizer_step_leaves_the_target_untouched():
    method = build("cmae")
    target_before = {k: v.clone() for k, v in method.target_encoder.state_dict().items()}
    out = method(batch(method))
    out["loss"].backward()
    for name, p in method.named_parameters():
        if name.startswith(("target_encoder", "target_projector")):
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    trainable = [p for g in method.param_groups(0.05) for p in g["params"]]
    assert {id(p) for p in trainable}.isdisjoint(id(p) for p in method.target_encoder.parameters())
    torch.optim.AdamW(trainable, lr=1e-2).step()
    for key, value in method.target_encoder.state_dict().items():
        assert torch.equal(value, target_before[key]), key


@pytest.mark.parametrize("schedule,progress,expected", [("constant", 0.5, 0.996), ("cosine", 0.5, 0.998)])
def test_ema_update_after_each_step(schedule, progress, expected):
    method = build("cmae", momentum_schedule=schedule)
    with torch.no_grad():
        for p in [*method.encoder.parameters(), *method.projector.parameters()]:
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in method.target_encoder.parameters()]
    before_proj = [p.clone() for p in method.target_projector.parameters()]
    method.after_step(progress)
    for old, new, src in zip(before, method.target_encoder.parameters(), method.encoder.parameters()):
        assert torch.allclose(new, expected * old + (1 - expected) * src, atol=1e-6)
    for old, new, src in zip(before_proj, method.target_projector.parameters(), method.projector.parameters()):
        assert torch.allclose(new, expected * old + (1 - expected) * src, atol=1e-6)


def test_invalid_settings_name_the_field():
    with pytest.raises(ValueError, match="mask_ratio"):
        build("cmae", mask_ratio=1.0)
    with pytest.raises(ValueError, match="mask"):
        build("cmae", mask="grid")
    with pytest.raises(ConfigError, match="method_args.block_unit: 8 exceeds the 7x7 patch grid"):
        build("cmae", block_unit=8)


def test_projector_and_predictor_hidden_layers_have_biases_and_a_grid_sized_block_is_allowed():
    method = build("cmae")
    for head in (method.projector, method.predictor):
        hidden = [m for m in head.modules() if isinstance(m, torch.nn.Linear)][:-1]
        assert hidden and all(layer.bias is not None for layer in hidden)
    assert build("cmae", mask="block", block_unit=7).online_mask(2, torch.device("cpu")).ids_keep.shape[0] == 2
    pred, mask = method.reconstruct(torch.randn(5, 1, 28, 28))
    assert pred.shape[0] == 5 and mask.ids_keep.shape[0] == 5
