import math

import pytest
import torch

from hybridssl.losses import info_nce
from hybridssl.nn.momentum import momentum_at
from hybridssl.nn.vit import pool
from tests.methods.toy import WIDTH as DIM
from tests.methods.toy import batch, build, build_at_vit_b_width, optimizer, snapshot, train_step


def test_heads_and_momentum_branch_layout():
    m = build("mocov3")
    assert [type(x).__name__ for x in m.projector][-1] == "BatchNorm1d" and not m.projector[-1].affine
    assert len([x for x in m.projector if isinstance(x, torch.nn.Linear)]) == 3
    assert len([x for x in m.predictor if isinstance(x, torch.nn.Linear)]) == 2 and not m.predictor[-1].affine
    assert m.projector[-2].out_features == 256 and m.projector[0].out_features == 8 * DIM  # 4096 narrowed
    assert not any(p.requires_grad for p in m.momentum_encoder.parameters())
    assert not any(p.requires_grad for p in m.momentum_projector.parameters())
    assert m.eval_pooling == "cls"


def test_init_as_the_official_code():
    m = build("mocov3")
    assert m.encoder.cls_token.abs().max() < 1e-5  # N(0, 1e-6)
    qkv = m.encoder.blocks[0].attn.qkv.weight  # 3D x D, bound sqrt(6 / (D + D))
    bound = math.sqrt(6 / (DIM + DIM))
    assert qkv.abs().max() <= bound and qkv.abs().max() > 0.9 * bound


def test_loss_is_two_directions_of_2tau_scaled_infonce():
    # flat logits (high tau): each direction is 2 tau ln B, the sum 4 tau ln B
    t = 50.0
    m = build("mocov3", temperature=t)
    assert m(batch(m, 32))["loss"].item() == pytest.approx(4 * t * math.log(32), rel=0.01)
    m = build("mocov3")
    assert m(batch(m, 32))["loss"].item() == pytest.approx(4 * 0.2 * math.log(32), rel=0.25)


def test_patch_embedding_frozen_bit_identical_after_a_step():
    m = build("mocov3")
    assert not any(p.requires_grad for p in m.encoder.patch_embed.parameters())
    names = {n for g in m.param_groups(0.1) for n in g["names"]}
    assert not any(n.startswith(("encoder.patch_embed", "momentum_")) for n in names)
    before = snapshot(m)
    train_step(m, batch(m, 16), optimizer(m, weight_decay=0.1))
    after = m.state_dict()
    for key in ("encoder.patch_embed.proj.weight", "encoder.patch_embed.proj.bias", "momentum_encoder.module.patch_embed.proj.weight"):
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["encoder.blocks.0.attn.qkv.weight"], after["encoder.blocks.0.attn.qkv.weight"])


def test_momentum_branch_follows_the_cosine_schedule():
    m = build("mocov3")
    key = "blocks.1.mlp.fc1.weight"
    target_before = m.momentum_encoder.module.state_dict()[key].clone()
    progress = 0.5
    train_step(m, batch(m, 16), optimizer(m), progress=progress)
    mom = momentum_at(progress, 0.99, 1.0, "cosine")
    assert mom == pytest.approx(0.995)
    online = m.encoder.state_dict()[key]
    expected = mom * target_before + (1 - mom) * online
    assert torch.allclose(m.momentum_encoder.module.state_dict()[key], expected, atol=1e-7)
    assert not torch.equal(m.momentum_encoder.module.state_dict()[key], target_before)


def perturb(module: torch.nn.Module, scale: float = 0.05) -> None:
    """Moves the online weights away from their EMA copies, so the two branches give different outputs."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def test_each_query_meets_the_momentum_key_of_the_other_view():
    m = build("mocov3").train()
    perturb(m.encoder)
    perturb(m.projector)
    b = batch(m, 16)
    t = m.cfg.temperature
    loss = m(b)["loss"]
    with torch.no_grad():  # the branches by hand, per view (the ViT has no BatchNorm; the heads run per view)
        q = [m.predictor(m.projector(pool(m.encoder(v), "cls"))) for v in b.views]
        k = [m.momentum_projector(pool(m.momentum_encoder(v), "cls")) for v in b.views]
        k_online = [m.projector(pool(m.encoder(v), "cls")) for v in b.views]

    def pair(a, c):
        return info_nce(q[0], c[a[0]], t, 2 * t) + info_nce(q[1], c[a[1]], t, 2 * t)

    assert loss.item() == pytest.approx(pair((1, 0), k).item(), rel=1e-5)
    # the test tells the mistakes apart: the same view's key, or keys from the online branch
    assert abs(pair((0, 1), k).item() - loss.item()) > 0.01
    assert abs(pair((1, 0), k_online).item() - loss.item()) > 0.01


def test_keys_carry_no_gradient_into_the_online_branch():
    # the online encoder also makes the keys here (momentum 0): only the query path may carry gradient
    m = build("mocov3", momentum=0.0).train()
    b = batch(m, 8)
    m.momentum_encoder.module = m.encoder
    m.momentum_projector.module = m.projector
    m(b)["loss"].backward()
    grads = [p.grad.clone() for p in m.encoder.parameters() if p.requires_grad]
    m.zero_grad()
    with torch.no_grad():
        k = [m.projector(pool(m.encoder(v), "cls")) for v in b.views]
    q = [m.predictor(m.projector(pool(m.encoder(v), "cls"))) for v in b.views]
    t = m.cfg.temperature
    (info_nce(q[0], k[1], t, 2 * t) + info_nce(q[1], k[0], t, 2 * t)).backward()
    for g, p in zip(grads, [p for p in m.encoder.parameters() if p.requires_grad]):
        assert torch.allclose(g, p.grad, atol=1e-6)


def test_init_from_restarts_the_momentum_branch_from_the_loaded_encoder():
    m = build("mocov3")
    with torch.no_grad():
        m.encoder.blocks[0].mlp.fc1.weight.add_(1.0)  # as if loaded from a checkpoint
    m.after_init_from({"encoder.blocks.0.mlp.fc1.weight"})
    assert torch.equal(m.momentum_encoder.module.blocks[0].mlp.fc1.weight, m.encoder.blocks[0].mlp.fc1.weight)


def test_only_qkv_gets_the_mocov3_init_and_heads_are_4096_wide_at_vit_b_width():
    m = build("mocov3")
    fc1 = m.encoder.blocks[0].mlp.fc1.weight  # Xavier-uniform on its own fan, not the qkv's one-third fan
    assert fc1.abs().max() <= math.sqrt(6 / (fc1.shape[0] + fc1.shape[1])) < 0.7 * math.sqrt(6 / (fc1.shape[0] // 3 + fc1.shape[1]))
    assert m.resolved == {"hidden_dim": 8 * DIM}
    assert build_at_vit_b_width("mocov3").resolved == {"hidden_dim": 4096}


def test_momentum_batchnorms_keep_their_own_running_statistics():
    m = build("mocov3")
    opt = optimizer(m)
    train_step(m, batch(m, 8), opt)  # at step 0 both branches are equal; they part after the first update
    train_step(m, batch(m, 8, seed=1), opt)
    online = [x for x in m.projector if isinstance(x, torch.nn.BatchNorm1d)][0]
    momentum = [x for x in m.momentum_projector.module if isinstance(x, torch.nn.BatchNorm1d)][0]
    assert online.num_batches_tracked == momentum.num_batches_tracked == 4  # one per view and step
    assert not torch.allclose(online.running_mean, momentum.running_mean)
