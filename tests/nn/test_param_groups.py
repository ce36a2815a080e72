"""Which parameters get weight decay and which lr scale (layer-wise decay) each encoder parameter gets."""

import pytest
import torch
from torch import nn

from hybridssl.nn.decoders import pixel_decoder
from hybridssl.nn.param_groups import layer_decay, no_weight_decay, param_groups
from hybridssl.nn.vit import ViT, vit_config


def test_no_weight_decay_on_norms_biases_and_tokens():
    enc = ViT(vit_config("vit-pico", 28, 1))
    dec = pixel_decoder(enc.cfg, 64, 1, 2)
    named = [(f"encoder.{n}", p) for n, p in enc.named_parameters()] + [(f"decoder.{n}", p) for n, p in dec.named_parameters()]
    groups = param_groups(named, 0.05)
    no_decay = {n for g in groups if g["weight_decay"] == 0 for n in g["names"]}
    decay = {n for g in groups if g["weight_decay"] == 0.05 for n in g["names"]}
    assert "encoder.cls_token" in no_decay and "decoder.mask_token" in no_decay
    assert "encoder.norm.weight" in no_decay and "encoder.blocks.0.attn.qkv.bias" in no_decay
    assert "encoder.blocks.0.attn.qkv.weight" in decay and "encoder.patch_embed.proj.weight" in decay
    assert len(no_decay | decay) == len(named)


def test_tokens_are_known_by_their_own_name_at_any_depth():
    """A DDP- or wrapper-prefixed token is still a token; a weight that only mentions one is decayed."""
    token, matrix = nn.Parameter(torch.zeros(1, 1, 8)), nn.Parameter(torch.zeros(8, 8))
    assert no_weight_decay("module.method.encoder.cls_token", token) and no_weight_decay("pos_embed", token)
    assert not no_weight_decay("module.encoder.cls_token_proj.weight", matrix)
    assert not no_weight_decay("module.pos_embed.scale", token) and not no_weight_decay("decoder.decoder_pos_embed", token)


def test_frozen_parameters_are_left_out():
    enc = ViT(vit_config("vit-pico", 28, 1))
    enc.freeze_lower(3)
    names = {n for g in param_groups(enc.named_parameters(), 0.05) for n in g["names"]}
    assert "blocks.0.attn.qkv.weight" not in names and "cls_token" not in names
    assert "blocks.3.attn.qkv.weight" in names


def test_layer_decay_exponents_as_mae_ct_codes_them():
    scale = layer_decay(depth=12, decay=0.65)
    assert scale("encoder.patch_embed.proj.weight") == pytest.approx(0.65**13)
    assert scale("encoder.cls_token") == pytest.approx(0.65**13) == scale("encoder.pos_embed")
    assert scale("encoder.blocks.0.mlp.fc1.weight") == pytest.approx(0.65**12)
    assert scale("encoder.blocks.11.mlp.fc1.weight") == pytest.approx(0.65)  # the top block is discounted
    assert scale("encoder.norm.weight") == 1.0 and scale("head.layer.weight") == 1.0
    trainable = [round(scale(f"encoder.blocks.{b}.x"), 3) for b in range(6, 12)]
    assert trainable == [0.075, 0.116, 0.179, 0.275, 0.423, 0.65]  # docs/methods.md 2d, ViT-B


def test_register_tokens_are_stem_tokens_without_weight_decay() -> None:
    """DINOv2-style registers (timm's `reg_token`) are tokens: no weight decay, the stem's lr scale."""
    from hybridssl.nn.param_groups import layer_decay, no_weight_decay
    from torch import nn as tnn

    assert no_weight_decay("encoder.reg_token", tnn.Parameter(torch.zeros(1, 4, 8)))
    assert layer_decay(12, 0.5)("encoder.reg_token") == 0.5 ** 13
