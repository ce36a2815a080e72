"""Activation checkpointing: the same losses and gradients (drop-path included), fewer saved
activations, and the run setting reaches every transformer stack of a method."""

from __future__ import annotations

import pytest
import torch

from hybridssl.config import resolve
from hybridssl.methods import METHODS
from hybridssl.methods.base import build_method
from hybridssl.nn.vit import ViT, set_grad_checkpointing, vit_config
from tests.methods.toy import INFO, SMALL, batch


def build(name: str, checkpointed: bool):
    torch.manual_seed(0)
    cls = METHODS[name]
    encoder = ViT(vit_config("vit-pico", 28, 1, embed_dim=32, depth=3, num_heads=2, drop_path=0.3))
    method = cls(cls.Config(**{k: v for k, v in SMALL.items() if k in cls.Config.model_fields}), encoder, INFO)
    set_grad_checkpointing(method, checkpointed)
    return method.train()


@pytest.mark.parametrize("name", ["mae", "cmae", "can", "mocov3"])
def test_checkpointed_blocks_give_the_same_losses_and_gradients(name):
    results = []
    for checkpointed in (False, True):
        method = build(name, checkpointed)
        b = batch(method)
        torch.manual_seed(1)  # masks, noise and drop-path draw the same in both runs
        losses = method(b)
        losses["loss"].backward()
        grads = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
        results.append((losses["loss"].detach(), grads))
    (loss, grads), (loss_ckpt, grads_ckpt) = results
    torch.testing.assert_close(loss_ckpt, loss)
    assert grads.keys() == grads_ckpt.keys() and any("blocks" in n for n in grads)
    for n in grads:
        torch.testing.assert_close(grads_ckpt[n], grads[n], msg=n)


def saved_bytes(vit: ViT, images: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for the backward of one forward (weights not counted)."""
    weights = {p.data_ptr() for p in vit.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in weights:
            seen[t.data_ptr()] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        vit(images).sum().backward()
    return sum(seen.values())


def test_checkpointing_keeps_a_fraction_of_the_activations():
    torch.manual_seed(0)
    vit = ViT(vit_config("vit-pico", 28, 1, depth=6))
    images = torch.randn(8, 1, 28, 28)
    full = saved_bytes(vit, images)
    set_grad_checkpointing(vit)
    kept = saved_bytes(vit, images)
    assert kept < full / 4, (kept, full)
    with torch.no_grad():  # no recording, nothing to checkpoint: the plain path
        assert vit(images).shape == (8, 50, 128)


def test_the_run_setting_reaches_every_transformer_stack():
    for enabled in (False, True):
        run = resolve({"method": "cmae", "model": "vit-pico", "epochs": 1, "grad_checkpointing": enabled or None})
        method = build_method(run, INFO)
        stacks = {n: m.grad_checkpointing for n, m in method.named_modules() if hasattr(m, "grad_checkpointing")}
        assert len(stacks) >= 4, stacks  # online and momentum encoders, pixel and feature decoders
        assert set(stacks.values()) == {enabled}, stacks


def test_a_checkpointed_run_trains_the_same_weights(fmnist_dir, tmp_path):
    """Through the CLI and Lightning: two steps with drop-path, with and without, end on the same weights."""
    from hybridssl.weights.ours import load_checkpoint
    from tests.conftest import pretrain_tiny

    states = []
    for flag in ("false", "true"):
        run = pretrain_tiny(fmnist_dir, tmp_path / flag, "mae", 2, "--set", "drop_path=0.2", "--set", f"grad_checkpointing={flag}")
        states.append(load_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"])
        assert f"grad_checkpointing: {flag}" in (run / "config.yaml").read_text()
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        torch.testing.assert_close(states[1][key], states[0][key], msg=key)
