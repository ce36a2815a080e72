"""MACRL mechanics: the unmasked no-grad momentum branch, queue negatives, the two reconstructions,
EMA after each step, and the queue-size check."""

import pytest
import torch
import torch.nn.functional as F

from hybridssl.config import ConfigError
from hybridssl.nn.patches import pixel_target
from tests.methods.toy import Capture, batch, build


def removed_mask(ids_keep, n=49):
    return torch.ones(ids_keep.shape[0], n).scatter_(1, ids_keep, 0.0)


def test_momentum_branch_sees_the_whole_weak_view_without_gradient():
    method = build("macrl", queue_size=64)
    b = batch(method, 8)
    assert len(b.views) == 3, "strong, weak, and the strong crop without colour"
    main, momentum = Capture(method.encoder), Capture(method.momentum_encoder.module)
    method(b)
    (strong, ids_keep), _ = main.calls[0]
    (weak, weak_keep), weak_tokens = momentum.calls[0]
    assert torch.equal(strong, b.views[0]) and torch.equal(weak, b.views[1])
    assert ids_keep.shape == (8, int(49 * 0.25)), "main branch: 75% masked"
    assert weak_tokens.shape == (8, 1 + 49, 32) and torch.equal(weak_keep, torch.arange(49).expand(8, -1)), "unmasked"
    assert not any(p.requires_grad for p in [*method.momentum_encoder.parameters(), *method.momentum_projector.parameters()])
    masked = build("macrl", queue_size=64, weak_mask_ratio=0.25)
    momentum = Capture(masked.momentum_encoder.module)
    masked(batch(masked, 8))
    assert momentum.calls[0][1].shape == (8, 1 + int(49 * 0.75), 32)


def test_contrastive_loss_uses_the_queue_as_negatives_then_enqueues_the_keys():
    method = build("macrl", queue_size=64)
    b = batch(method, 8)
    queue_before = method.queue.features.clone()
    query, key = Capture(method.projector), Capture(method.momentum_projector.module)
    out = method(b)
    q, k = F.normalize(query.calls[0][1], dim=1), F.normalize(key.calls[0][1], dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue_before.T], dim=1) / 0.2
    assert out["contrastive"].item() == pytest.approx(F.cross_entropy(logits, torch.zeros(8, dtype=torch.long)).item(), rel=1e-5)
    assert method.queue.ptr.item() == 8 and torch.allclose(method.queue.features[:8], k)
    assert torch.equal(method.queue.ids[:8], b.ids) and torch.equal(method.queue.features[8:], queue_before[8:])
    # other negatives give another loss
    method.queue.features.copy_(F.normalize(torch.randn_like(queue_before), dim=1))
    assert abs(method(b)["contrastive"].item() - out["contrastive"].item()) > 1e-3


def test_reconstructions_main_on_removed_patches_of_the_clean_crop_momentum_on_all():
    method = build("macrl", queue_size=64)
    b = batch(method, 8)
    main, decoder = Capture(method.encoder), Capture(method.decoder)
    out = method(b)
    removed = removed_mask(main.calls[0][0][1])
    main_pred, momentum_pred = decoder.calls[0][1], decoder.calls[1][1]
    clean = pixel_target(b.views[2], 4, True)
    by_hand = ((main_pred - clean).abs().mean(-1) * removed).sum() / removed.sum()
    assert out["reconstruction"].item() == pytest.approx(by_hand.item(), rel=1e-5)
    weak = pixel_target(b.views[1], 4, True)
    assert out["momentum_reconstruction"].item() == pytest.approx((momentum_pred - weak).abs().mean().item(), rel=1e-5)
    total = out["reconstruction"] + out["contrastive"] + out["momentum_reconstruction"]
    assert out["loss"].item() == pytest.approx(total.item(), rel=1e-6)
    (grad,) = torch.autograd.grad(out["reconstruction"], main_pred, retain_graph=True)
    assert torch.equal(grad.abs().sum(-1) > 0, removed.bool())


def test_momentum_reconstruction_trains_the_decoder_only_and_can_be_switched_off():
    method = build("macrl", queue_size=64)
    out = method(batch(method, 8))
    out["momentum_reconstruction"].backward()
    for name, p in method.named_parameters():
        if name == "decoder.mask_token":  # the unmasked momentum branch fills no position with it
            assert p.grad is None or p.grad.abs().sum() == 0
        elif name.startswith("decoder."):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None or p.grad.abs().sum() == 0, name
    off = build("macrl", queue_size=64, momentum_branch_recon=False)
    out = off(batch(off, 8))
    assert "momentum_reconstruction" not in out
    assert out["loss"].item() == pytest.approx((out["reconstruction"] + out["contrastive"]).item(), rel=1e-6)


def test_total_loss_trains_every_online_parameter_and_no_momentum_one():
    method = build("macrl", queue_size=64)
    method(batch(method, 8))["loss"].backward()
    for name, p in method.named_parameters():
        if name.startswith("momentum_"):
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert method.encoder.patch_embed.proj.weight.requires_grad, "the patch embedding is trainable"


def test_ema_follows_a_cosine_schedule_after_each_step():
    method = build("macrl", queue_size=64)
    with torch.no_grad():
        for p in [*method.encoder.parameters(), *method.projector.parameters()]:
            p.add_(torch.randn_like(p))
    pairs = [(method.momentum_encoder, method.encoder), (method.momentum_projector, method.projector)]
    before = [[p.clone() for p in ema.parameters()] for ema, _ in pairs]
    method.after_step(0.5)  # 0.99 -> 1 cosine: 0.995 half way
    for (ema, source), old in zip(pairs, before):
        for o, new, src in zip(old, ema.parameters(), source.parameters()):
            assert torch.allclose(new, 0.995 * o + 0.005 * src, atol=1e-6)


def test_queue_larger_than_the_dataset_is_a_config_error():
    """One check for every queue of every method, in the engine, before training."""
    from hybridssl.config import resolve
    from hybridssl.engine.train import check_queues

    run = resolve({"method": "macrl", "batch_size": 32})
    with pytest.raises(ConfigError, match="method_args.queue_size: 4096 exceeds the 512 training images"):
        check_queues(build("macrl"), run, 512)
    check_queues(build("macrl", queue_size=512), run, 512)
    with pytest.raises(ConfigError, match="fewer than one global batch"):
        check_queues(build("macrl", queue_size=16), run, 512)


def test_the_queue_stores_the_momentum_keys_with_their_ids_and_labels():
    method = build("macrl", queue_size=64)
    b = batch(method, 8)
    method(b)
    stored = method.queue.ptr.item()
    assert stored == 8
    assert torch.equal(method.queue.ids[:8], b.ids) and torch.equal(method.queue.labels[:8], b.labels)


def test_weak_view_crop_scale_and_momentum_schedule_follow_the_settings(monkeypatch):
    method = build("macrl", weak_crop_scale=(0.7, 0.9), momentum=0.9, momentum_schedule="constant")
    assert tuple(method.views.crops[1].scale) == (0.7, 0.9)
    seen = []
    monkeypatch.setattr(method, "update_momentum", seen.append)
    method.after_step(0.5)
    assert seen == [0.9]
    pred, mask = method.reconstruct(torch.randn(5, 1, 28, 28))
    assert pred.shape[0] == 5 and mask.ids_keep.shape[0] == 5
