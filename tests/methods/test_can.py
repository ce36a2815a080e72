"""CAN mechanics: noisy input but clean reconstruction target, denoising on visible patches only,
reconstruction on removed ones, the noise-level conditioning, NT-Xent on per-view projections."""

import pytest
import torch
import torch.nn.functional as F

from hybridssl.losses import masked_mse, nt_xent
from hybridssl.nn.patches import patchify, pixel_target
from hybridssl.nn.pos_embed import sincos_scalar
from hybridssl.nn.vit import pool
from tests.methods.toy import Capture, batch, build, views_at_colour_strengths


def step(method, b, decoder_edit=None, seed=7):
    """One forward with the random draws (noise, masks) fixed by `seed`; records encoder and decoder."""
    encoder, decoder = Capture(method.encoder), Capture(method.decoder)
    if decoder_edit is not None:
        method.decoder.register_forward_hook(lambda mod, args, out: decoder_edit(out, args))
    torch.manual_seed(seed)
    return method(b), encoder.calls[0], decoder.calls[0]


def removed_mask(ids_keep, n=49):
    return torch.ones(ids_keep.shape[0], n).scatter_(1, ids_keep, 0.0)


def test_noisy_input_clean_target_and_the_loss_weights():
    method = build("can")
    b = batch(method, 8)
    out, ((noisy, ids_keep), latent), ((_, ids_restore), pred) = step(method, b)
    clean = torch.cat(b.views)
    noise = noisy - clean
    assert noisy.shape == (16, 1, 28, 28) and ids_keep.shape == (16, 24), "2B views, 50% of 49 patches kept"
    per_image = noise.flatten(1).std(1)
    assert torch.all(per_image > 0) and torch.all(per_image < 0.05 * 1.2), "sigma ~ U(0, 0.05) per image"
    assert per_image.max() / per_image.min() > 1.5, "noise levels differ between images"
    mask = removed_mask(ids_keep)
    assert out["reconstruction"].item() == pytest.approx(masked_mse(pred, pixel_target(clean, 4, True), mask).item(), rel=1e-5)
    noisy_target = masked_mse(pred, pixel_target(noisy, 4, True), mask)
    assert abs(out["reconstruction"].item() - noisy_target.item()) > 1e-4, "the target is the clean view"
    z = pool(latent, "mean_patch")
    assert out["contrastive"].item() == pytest.approx(nt_xent(method.projector(z[:8]), method.projector(z[8:]), 0.1).item(), rel=1e-5)
    total = 0.03 * out["contrastive"] + 0.67 * out["reconstruction"] + 0.3 * out["denoising"]
    assert out["loss"].item() == pytest.approx(total.item(), rel=1e-6)


def test_denoising_target_is_the_added_noise_on_visible_patches_only():
    method = build("can", noise_target="raw")
    b = batch(method, 8)
    out, ((noisy, ids_keep), _), (_, pred) = step(method, b)
    visible = 1 - removed_mask(ids_keep)
    noise = patchify(noisy - torch.cat(b.views), 4)
    by_hand = ((pred - noise).pow(2).mean(-1) * visible).sum() / visible.sum()
    assert out["denoising"].item() == pytest.approx(by_hand.item(), rel=1e-5)


@pytest.mark.parametrize("where", ["removed", "visible"])
def test_each_loss_ignores_the_other_losses_patches(where):
    method = build("can")
    b = batch(method, 8)
    base, _, _ = step(method, b)

    def perturb(out, args):
        tokens, ids_restore = args[0], args[1]
        visible = ids_restore < tokens.shape[1] - 1  # a patch's place in the shuffle < number kept
        hit = ~visible if where == "removed" else visible
        return out + 100.0 * hit.unsqueeze(-1)

    moved, _, _ = step(method, b, decoder_edit=perturb)
    if where == "removed":
        assert moved["denoising"].item() == pytest.approx(base["denoising"].item(), rel=1e-6)
        assert moved["reconstruction"].item() > base["reconstruction"].item() + 100
    else:
        assert moved["reconstruction"].item() == pytest.approx(base["reconstruction"].item(), rel=1e-6)
        assert moved["denoising"].item() > base["denoising"].item() + 100


@pytest.mark.parametrize("where", ["decoder_tokens", "encoder_tokens"])
def test_the_decoder_is_told_the_noise_level(where):
    method = build("can", noise_embed_at=where, decoder_dim=48)
    b = batch(method, 8)
    out, _, _ = step(method, b)
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.noise_embed.parameters())
    assert method.noise_embed[-1].out_features == (48 if where == "decoder_tokens" else 32)
    level = method.noise_level_embedding(torch.tensor([0.0, 0.05]))
    assert not torch.allclose(level[0], level[1])


def test_rescaled_sigma_spreads_the_embedding():
    plain, rescaled = build("can"), build("can", rescale_sigma=True)
    sigma = torch.tensor([0.01, 0.04])
    raw = sincos_scalar(128, sigma)
    spread = sincos_scalar(128, sigma * 1000 / 0.05)
    assert (raw[0] - raw[1]).abs().max() < 0.05 and (spread[0] - spread[1]).abs().max() > 0.5
    assert not torch.allclose(plain.noise_level_embedding(sigma), rescaled.noise_level_embedding(sigma))


def test_every_parameter_is_trained_and_there_is_no_momentum_network():
    method = build("can")
    out, _, _ = step(method, batch(method, 8))
    out["loss"].backward()
    for name, p in method.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert not any("ema" in type(m).__name__.lower() for m in method.modules())
    before = {k: v.clone() for k, v in method.state_dict().items()}
    method.after_step(0.5)
    assert all(torch.equal(v, before[k]) for k, v in method.state_dict().items())


def test_projector_batchnorm_statistics_are_per_view():
    method = build("can")
    b = batch(method, 8)
    calls = Capture(method.projector)
    step(method, b)
    assert [args[0].shape[0] for args, _ in calls.calls] == [8, 8], "one projector call per view"
    assert F.normalize(calls.calls[0][1], dim=1).shape == (8, 128)


def test_the_old_spelling_colour_strength_still_works_with_a_warning():
    from hybridssl.methods import METHODS

    with pytest.warns(FutureWarning, match="'colour_strength' is now called 'color_strength'"):
        cfg = METHODS["can"].Config.model_validate({"colour_strength": 0.5})
    assert cfg.color_strength == 0.5 and "colour_strength" not in cfg.model_dump()


def test_noise_level_embedding_by_hand_plain_rescaled_and_at_sigma_max_zero():
    sigma = torch.tensor([0.0, 0.01, 0.04])
    plain, rescaled = build("can"), build("can", rescale_sigma=True)
    assert torch.allclose(plain.noise_level_embedding(sigma), plain.noise_embed(sincos_scalar(128, sigma)))
    assert torch.allclose(rescaled.noise_level_embedding(sigma), rescaled.noise_embed(sincos_scalar(128, sigma * 1000 / 0.05)))
    flat = build("can", rescale_sigma=True, sigma_max=0.0)  # no noise at all: nothing to rescale by
    assert torch.allclose(flat.noise_level_embedding(sigma), flat.noise_embed(sincos_scalar(128, sigma)))
    # the embedding MLP is not affine (a hidden nonlinearity): f(0) differs from (f(a) + f(-a)) / 2
    a = 3 * torch.randn(1, 128, generator=torch.Generator().manual_seed(0))
    mid = plain.noise_embed(torch.zeros(1, 128))
    assert not torch.allclose(mid, (plain.noise_embed(a) + plain.noise_embed(-a)) / 2, atol=1e-3)


def test_encoder_token_conditioning_adds_the_level_to_every_token():
    method = build("can", noise_embed_at="encoder_tokens")
    latent, sigma = torch.randn(2, 25, 32), torch.tensor([0.01, 0.03])
    mask = __import__("hybridssl.nn.masking", fromlist=["random_mask"]).random_mask(2, 49, 0.5)
    seen = Capture(method.decoder)
    method.decode(latent, mask, sigma)
    tokens = seen.calls[0][0][0]
    assert torch.allclose(tokens, latent + method.noise_level_embedding(sigma).unsqueeze(1))


def test_denoising_target_is_normalised_per_patch_by_default_and_settings_reach_the_losses():
    method = build("can", temperature=0.3)
    b = batch(method, 8)
    out, ((noisy, ids_keep), latent), (_, pred) = step(method, b)
    visible = 1 - removed_mask(ids_keep)
    noise = patchify(noisy - torch.cat(b.views), 4)
    target = (noise - noise.mean(-1, keepdim=True)) / (noise.var(-1, keepdim=True) + 1e-6).sqrt()
    by_hand = ((pred - target).pow(2).mean(-1) * visible).sum() / visible.sum()
    assert out["denoising"].item() == pytest.approx(by_hand.item(), rel=1e-4)
    z = pool(latent, "mean_patch")
    assert out["contrastive"].item() == pytest.approx(nt_xent(method.projector(z[:8]), method.projector(z[8:]), 0.3).item(), rel=1e-5)


def test_views_projector_depth_and_reconstruction_follow_the_settings():
    views = views_at_colour_strengths("can", (0.0, 1.0))
    assert not torch.equal(views[0][0], views[1][0]), "the colour strength reaches the augmentation"
    for layers in (2, None):  # None: the default, 3
        method = build("can", proj_layers=layers) if layers else build("can")
        linears = [m for m in method.projector.modules() if isinstance(m, torch.nn.Linear)]
        assert len(linears) == (layers or 3)
    pred, mask = build("can").reconstruct(torch.randn(5, 1, 28, 28))
    assert pred.shape[0] == 5 and mask.ids_keep.shape == (5, 24)
