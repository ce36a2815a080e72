import pytest
import torch

from hybridssl.nn.masking import random_mask
from hybridssl.nn.vit import PRESETS, ViT, pool, vit_config


def small_vit(**kw) -> ViT:
    return ViT(vit_config("vit-pico", 28, 1, **kw))


def test_presets_match_the_spec():
    assert PRESETS["vit-pico"] == {"embed_dim": 128, "depth": 6, "num_heads": 4}
    assert PRESETS["vit-tiny"] == {"embed_dim": 192, "depth": 12, "num_heads": 3}
    assert PRESETS["vit-small"] == {"embed_dim": 384, "depth": 12, "num_heads": 6}
    assert PRESETS["vit-base"] == {"embed_dim": 768, "depth": 12, "num_heads": 12}
    assert vit_config("vit-pico", 28, 1).patch_size == 4
    assert vit_config("vit-base", 224, 3).patch_size == 16


def test_any_size_channels_patch():
    vit = ViT(vit_config("vit-pico", 32, 3, patch_size=8))
    assert vit(torch.randn(2, 3, 32, 32)).shape == (2, 1 + 16, 128)
    with pytest.raises(ValueError, match="does not divide"):
        vit_config("vit-pico", 28, 1, patch_size=5)


def test_forward_runs_only_kept_tokens():
    torch.manual_seed(0)
    vit = small_vit().eval()
    x = torch.randn(3, 1, 28, 28)
    m = random_mask(3, 49, 0.75)
    assert vit(x, m.ids_keep).shape == (3, 1 + 12, 128)
    # same tokens in another order give the same (permuted) outputs: positions travel with the tokens
    perm = torch.randperm(12)
    a = vit(x, m.ids_keep)[:, 1:]
    b = vit(x, m.ids_keep[:, perm])[:, 1:]
    assert torch.allclose(a[:, perm], b, atol=1e-5)


def test_gradients_reach_only_visible_patches():
    torch.manual_seed(0)
    vit = small_vit()
    x = torch.randn(2, 1, 28, 28, requires_grad=True)
    m = random_mask(2, 49, 0.75)
    vit(x, m.ids_keep).sum().backward()
    grad_per_patch = x.grad.view(2, 1, 7, 4, 7, 4).abs().sum(dim=(1, 3, 5)).flatten(1)  # B x 49
    assert torch.all(grad_per_patch[m.mask.bool()] == 0)
    assert torch.all(grad_per_patch[~m.mask.bool()] > 0)


def test_final_norm_switch_and_pooling():
    vit = small_vit().eval()
    x = torch.randn(2, 1, 28, 28)
    raw, normed = vit(x, final_norm=False), vit(x)
    assert torch.allclose(vit.norm(raw), normed, atol=1e-6)
    assert torch.equal(pool(normed, "cls"), normed[:, 0])
    assert torch.allclose(pool(normed, "mean_patch"), normed[:, 1:].mean(1))


def test_freeze_lower_keeps_stem_and_blocks_frozen_in_eval_mode():
    vit = small_vit(drop_path=0.1)
    vit.freeze_lower(3)
    vit.train()
    assert not vit.patch_embed.proj.weight.requires_grad and not vit.cls_token.requires_grad
    assert all(not p.requires_grad for b in vit.blocks[:3] for p in b.parameters())
    assert all(p.requires_grad for b in vit.blocks[3:] for p in b.parameters())
    assert not vit.blocks[0].training and vit.blocks[3].training


def test_timm_rebuilds_the_encoder_from_its_kwargs():
    import timm

    encoder = ViT(vit_config("vit-pico", 24, 2, patch_size=6, embed_dim=24, depth=1, num_heads=3, mlp_ratio=2.0)).eval()
    model = timm.create_model("vit_base_patch16_224", pretrained=False, **encoder.cfg.timm_kwargs()).eval()
    model.load_state_dict(encoder.state_dict())  # strict: same shapes, same names
    x = torch.randn(2, 2, 24, 24)
    with torch.no_grad():
        assert torch.allclose(model.forward_features(x), encoder(x), atol=1e-5)
        assert torch.allclose(model(x), pool(encoder(x), "cls"), atol=1e-5)  # no classifier, CLS pooled


@pytest.mark.parametrize("side,size", [(28, 28), (35, 32), (10, 16), (100, 96), (333, 224), (130, 128)])
def test_default_image_size_keeps_small_images_and_caps_photos(side, size):
    from hybridssl.nn.vit import default_image_size, default_patch_size

    assert default_image_size(side) == size and size % default_patch_size(size) == 0
