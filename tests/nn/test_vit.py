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


def dinov2_like(**overrides) -> ViT:
    """A tiny ViT with layer scale and 2 registers, their values drawn away from their inits."""
    torch.manual_seed(0)
    cfg = vit_config("vit-pico", 24, 2, patch_size=6, embed_dim=24, depth=2, num_heads=3,
                     **{"init_values": 1e-5, "reg_tokens": 2, **overrides})  # fmt: skip
    encoder = ViT(cfg).eval()
    with torch.no_grad():
        for name, param in encoder.named_parameters():
            if name.endswith("gamma") or name == "reg_token":
                param.normal_()
        encoder.pos_embed.normal_()  # a CLS position too, as DINOv2's
    return encoder


@pytest.mark.parametrize("registers", [2, 0])
def test_layer_scale_and_registers_are_timms(registers):
    """timm rebuilt from timm_kwargs and timm_state_dict computes our tokens (registers included when
    asked for) and both poolings: registers without positions, CLS with one, gamma on both branches."""
    import timm

    from hybridssl.nn.vit import timm_state_dict

    encoder = dinov2_like(reg_tokens=registers)
    x = torch.randn(2, 2, 24, 24)
    for pooling, head in (("cls", {"global_pool": "token"}), ("mean_patch", {"global_pool": "avg", "fc_norm": False})):
        model = timm.create_model("vit_base_patch16_224", pretrained=False, **{**encoder.cfg.timm_kwargs(), **head}).eval()
        model.load_state_dict(timm_state_dict(encoder.state_dict(), encoder.cfg))  # strict
        with torch.no_grad():
            assert torch.allclose(model.forward_features(x), encoder(x, registers=True), atol=1e-6)
            assert torch.allclose(model(x), pool(encoder(x), pooling), atol=1e-6)
    assert encoder.blocks[0].ls1.gamma.shape == (24,) and encoder.num_prefix_tokens == 1 + registers


def test_registers_run_with_every_pass_and_stay_out_of_the_output():
    """[CLS, registers, patches] inside; [CLS, patches] out, masked or not, so `tokens[:, 1:]` are the
    patches; the timm layout read back (zero CLS row, position folded into cls_token) computes the same."""
    from hybridssl.nn.vit import timm_state_dict, with_cls_position_row

    encoder = dinov2_like()
    x = torch.randn(3, 2, 24, 24)
    m = random_mask(3, 16, 0.75)
    with torch.no_grad():
        assert encoder(x).shape == (3, 1 + 16, 24) and encoder(x, registers=True).shape == (3, 1 + 2 + 16, 24)
        assert encoder(x, m.ids_keep).shape == (3, 1 + 4, 24) and encoder(x, m.ids_keep, registers=True).shape == (3, 7, 24)
        full = encoder(x, registers=True)
        assert torch.equal(encoder(x), torch.cat([full[:, :1], full[:, 3:]], dim=1))
        timm_layout = timm_state_dict(encoder.state_dict(), encoder.cfg)
        assert timm_layout["pos_embed"].shape == (1, 16, 24)
        back = ViT(encoder.cfg).eval()
        back.load_state_dict(with_cls_position_row(timm_layout))
        assert torch.allclose(back(x), encoder(x), atol=1e-6)
        ours = encoder.state_dict()
        assert with_cls_position_row(ours) is ours  # 1 + grid^2 rows: already ours


def test_gradients_reach_layer_scale_and_registers_and_freezing_covers_registers():
    encoder = dinov2_like().train()
    encoder(torch.randn(2, 2, 24, 24)).sum().backward()
    assert encoder.reg_token.grad.abs().sum() > 0 and encoder.blocks[1].ls2.gamma.grad.abs().sum() > 0
    encoder.freeze_lower(1)
    assert not encoder.reg_token.requires_grad and not encoder.blocks[0].ls1.gamma.requires_grad
    assert encoder.blocks[1].ls1.gamma.requires_grad


def test_configs_from_before_layer_scale_and_registers_build_the_same_vit():
    """A recorded encoder config without the new fields builds the plain ViT, with the same entries."""
    from hybridssl.nn.vit import ViTConfig

    old = {"image_size": 28, "patch_size": 4, "in_chans": 1, "embed_dim": 128, "depth": 6, "num_heads": 4,
           "mlp_ratio": 4.0, "drop_path": 0.0}  # fmt: skip
    cfg = ViTConfig(**old)
    assert cfg == vit_config("vit-pico", 28, 1) and not cfg.layer_scale and cfg.reg_tokens == 0
    encoder = ViT(cfg)
    assert encoder.reg_token is None and not any("gamma" in k or "reg_token" in k for k in encoder.state_dict())
    assert "init_values" not in cfg.timm_kwargs() and "reg_tokens" not in cfg.timm_kwargs()
    assert PRESETS["vit-small-ls-reg4"] == {**PRESETS["vit-small"], "init_values": 1e-5, "reg_tokens": 4}
