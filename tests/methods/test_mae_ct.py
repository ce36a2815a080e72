import json
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from hybridssl.config import ConfigError, RunConfig, resolve
from hybridssl.data.sources import DataInfo
from hybridssl.methods import METHODS
from hybridssl.methods.mae_ct import MAECTHeadConfig, MAECTTuneConfig
from hybridssl.nn.vit import pool
from tests.methods import toy
from tests.methods.toy import batch, optimizer, snapshot, train_step

DEPTH = 4  # 2 frozen and 2 tuned blocks, so the tuned ones get distinct lr factors
HALF = DEPTH // 2
build = partial(toy.build, depth=DEPTH)


def encoder_part(state: dict, prefix: str) -> dict:
    return {k: v for k, v in state.items() if k.startswith(prefix)}


# ------------------------------------------------------------------ stage 2: head on the frozen encoder


def test_head_stage_freezes_the_whole_encoder():
    m = build("mae-ct-head")
    assert not any(p.requires_grad for p in m.encoder.parameters())
    m.train()
    assert not m.encoder.patch_embed.training and not any(b.training for b in m.encoder.blocks)
    assert m.projector.training and m.lr_views == 2 and m.eval_pooling == "mean_patch"
    before = snapshot(m)
    train_step(m, batch(m, 16), optimizer(m, weight_decay=0.05))
    after = m.state_dict()
    for key in encoder_part(before, "encoder."):
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["projector.0.weight"], after["projector.0.weight"])
    assert not torch.equal(before["predictor.0.weight"], after["predictor.0.weight"])


def test_head_stage_views_loss_and_defaults():
    m = build("mae-ct-head")
    b = batch(m, 32)
    assert len(b.views) == 2
    assert m.cfg.temperature == 0.15 and m.topk == 1 and m.cfg.pooling == "mean_patch"
    assert m(b)["loss"].item() == pytest.approx(math.log(32), rel=0.05)
    assert m.queue.size == 128 and m.queue.features.shape[1] == 256


# ------------------------------------------------------------------ stage 3: contrastive tuning


def test_tune_stage_freezes_stem_cls_and_lower_half_in_eval_mode():
    m = build("mae-ct-tune")
    trainable = {n for n, p in m.encoder.named_parameters() if p.requires_grad}
    upper = {n for n, _ in m.encoder.named_parameters() if n.startswith(tuple(f"blocks.{b}." for b in range(HALF, DEPTH)))}
    assert trainable == upper | {"norm.weight", "norm.bias"}  # docs/methods.md Appendix C
    m.train()
    assert [b.training for b in m.encoder.blocks] == [False] * HALF + [True] * HALF
    assert not m.encoder.patch_embed.training
    before = snapshot(m)
    train_step(m, batch(m, 16), optimizer(m, weight_decay=0.05))
    after = m.state_dict()
    frozen = ("encoder.patch_embed", "encoder.cls_token", "encoder.pos_embed", *(f"encoder.blocks.{b}." for b in range(HALF)))
    for key in before:
        if key.startswith(frozen):
            assert torch.equal(before[key], after[key]), key
    for b in range(HALF, DEPTH):
        assert not torch.equal(before[f"encoder.blocks.{b}.mlp.fc1.weight"], after[f"encoder.blocks.{b}.mlp.fc1.weight"])


def test_tune_stage_layerwise_lr_and_head_groups():
    m = build("mae-ct-tune", head_lr_scale=5.0)
    groups = m.param_groups(0.05)
    for g in groups:
        for name in g["names"]:
            if name.startswith("encoder.blocks."):
                b = int(name.split(".")[2])
                assert b >= HALF and g["lr_scale"] == pytest.approx(0.65 ** (DEPTH - b)), name
            elif name.startswith("encoder."):
                assert name.startswith("encoder.norm.") and g["lr_scale"] == 1.0
            else:
                assert name.startswith(("projector.", "predictor.")) and g["lr_scale"] == 5.0
                assert g["weight_decay"] in (0.0, 1e-5)
                assert g["weight_decay"] == 0.0 or name.endswith(".weight") and g["params"][g["names"].index(name)].ndim == 2
    decayed = {n for g in groups if g["weight_decay"] == 0.05 for n in g["names"]}
    assert f"encoder.blocks.{DEPTH - 1}.attn.qkv.weight" in decayed and not any(n.startswith(("projector", "predictor")) for n in decayed)
    names = {n for g in groups for n in g["names"]}
    assert not any(n.startswith(("target_projector", "encoder.blocks.0.", "encoder.patch_embed")) for n in names)


def test_target_projector_starts_from_the_projector_and_follows_by_ema():
    m = build("mae-ct-tune")
    with torch.no_grad():  # as if stage 2's head had just been loaded
        m.projector[0].weight.add_(0.5)
        m.projector[1].running_mean.add_(2.0)
    m.after_init_from({"projector.0.weight"})
    assert torch.equal(m.target_projector.module[0].weight, m.projector[0].weight)
    assert torch.equal(m.target_projector.module[1].running_mean, m.projector[1].running_mean)
    assert not any(p.requires_grad for p in m.target_projector.parameters())
    target_before = m.target_projector.module[0].weight.clone()
    train_step(m, batch(m, 16), optimizer(m))
    online = m.projector[0].weight
    assert torch.allclose(m.target_projector.module[0].weight, 0.99 * target_before + 0.01 * online, atol=1e-7)
    assert torch.equal(m.target_projector.module[1].running_mean, m.projector[1].running_mean)  # copied, not averaged


def test_lookup_and_queue_use_the_target_projector():
    m = build("mae-ct-tune").train()
    with torch.no_grad():
        m.target_projector.module[0].weight.mul_(-1.0)  # make target and online projector differ
    b = batch(m, 16)
    m(b)
    with torch.no_grad():
        h1 = pool(m.encoder(b.views[0]), "mean_patch")
        target, online = m.target_projector(h1), m.projector(h1)
    assert torch.allclose(m.queue.features[:16], F.normalize(target, dim=1), atol=1e-4)
    assert not torch.allclose(m.queue.features[:16], F.normalize(online, dim=1), atol=1e-2)


def test_topk_scaled_to_the_queue():
    big = DataInfo("toy", 28, 1, (0.5,), (0.25,), 10, num_images=1_000_000)
    assert build("mae-ct-tune", info=big).topk == 20  # the paper's queue of 65536
    assert build("mae-ct-tune", info=big, augment="byol").topk == 10
    fmnist = DataInfo("toy", 28, 1, (0.5,), (0.25,), 10, num_images=60_000)
    m = build("mae-ct-tune", info=fmnist)
    assert m.queue.size == 15_000 and m.topk == 5 and m.resolved["topk"] == 5
    assert build("mae-ct-tune", topk=7).topk == 7


def test_invalid_frozen_blocks_names_the_field():
    with pytest.raises(ConfigError, match="method_args.frozen_blocks"):
        build("mae-ct-tune", frozen_blocks=DEPTH + 1)
    assert build("mae-ct-tune", frozen_blocks=0).encoder.cls_token.requires_grad


# ------------------------------------------------------------------ the recipe


def plan(method: str = "mae-ct", **flags):
    run = resolve({"method": method, **flags})
    return [(s.folder, s.method, s.epochs) for s in METHODS[method].stages(run)], METHODS[method].stages(run)


def test_recipe_stages_and_their_epochs():
    assert plan(epochs=800)[0] == [("stage1-mae", "mae", 800), ("stage2-head", "mae-ct-head", 20), ("stage3-tune", "mae-ct-tune", 20)]
    assert plan("mae-ct-aug", epochs=800)[0][2] == ("stage3-tune", "mae-ct-tune", 80)
    assert [e for *_, e in plan(epochs=100)[0]] == [100, 5, 10]
    assert [e for *_, e in plan(epochs=2)[0]] == [2, 2, 2]
    assert [e for *_, e in plan(max_steps=3)[0]] == [None, None, None]
    assert [f for f, *_ in plan(init_from="mae.ckpt", epochs=100)[0]] == ["stage2-head", "stage3-tune"]
    folders = [f for f, *_ in plan(epochs=1)[0]]
    assert folders == sorted(folders)


def test_recipe_shares_the_head_settings_between_stages():
    _, stages = plan(epochs=10, method_args={"queue_size": 4096, "proj_dim": 64, "mae": {"mask_ratio": 0.6}})
    mae, head, tune = (s.method_args for s in stages)
    assert mae["mask_ratio"] == 0.6
    assert head["temperature"] == 0.15 and head["topk"] == 1 and "layer_decay" not in head
    assert head["queue_size"] == tune["queue_size"] == 4096 and head["proj_dim"] == tune["proj_dim"] == 64
    assert tune["layer_decay"] == 0.65 and tune["target_momentum"] == 0.99
    aug = plan("mae-ct-aug", epochs=10)[1]
    assert aug[1].method_args["augment"] == aug[2].method_args["augment"] == "byol" and aug[2].method_args["head_lr_scale"] == 5.0


def test_recipe_settings_fail_before_training_naming_the_field():
    with pytest.raises(ConfigError, match="method_args.tune_optim"):
        resolve({"method": "mae-ct", "method_args": {"tune_optim": {"base_lr": -1}}})
    with pytest.raises(ConfigError, match="method_args.mae.mask_ratio"):
        resolve({"method": "mae-ct", "method_args": {"mae": {"mask_ratio": 1.5}}})
    assert isinstance(resolve({"method": "mae-ct"}), RunConfig)


def test_recipe_stage_settings_are_each_stage_own_json_values():
    args = {"temperature": 0.2, "head_temperature": 0.3, "head_optim": {"base_lr": 0.01}, "tune_optim": {"weight_decay": 0.02}}
    _, (mae, head, tune) = plan(epochs=10, method_args=args)
    assert head.method_args["temperature"] == 0.3 and tune.method_args["temperature"] == 0.2
    assert set(head.method_args) == set(MAECTHeadConfig.model_fields) and set(tune.method_args) == set(MAECTTuneConfig.model_fields)
    assert (mae.optim, head.optim, tune.optim) == (None, {"base_lr": 0.01}, {"weight_decay": 0.02})
    assert plan(epochs=10)[1][1].optim == {}, "no head_optim: the stage method's own defaults, not stage 1's optimizer"
    for stage in (mae, head, tune):  # written to config.yaml as they are
        assert json.loads(json.dumps(stage.method_args)) == stage.method_args


def test_target_projector_batchnorm_statistics_are_copied_even_after_the_branches_part():
    m = build("mae-ct-tune")
    opt = optimizer(m)
    for seed in range(3):  # after the first update the target's weights differ, so would its own statistics
        train_step(m, batch(m, 16, seed=seed), opt)
    assert not torch.equal(m.target_projector.module[0].weight, m.projector[0].weight)
    assert torch.equal(m.target_projector.module[1].running_mean, m.projector[1].running_mean)


def test_tune_stage_freezes_up_to_every_block_and_records_what_it_resolved():
    m = build("mae-ct-tune", frozen_blocks=DEPTH)  # all of them: only the final norm and the heads train
    assert m.resolved["frozen_blocks"] == DEPTH and not any(p.requires_grad for p in m.encoder.blocks.parameters())
    assert build("mae-ct-tune").resolved["frozen_blocks"] == DEPTH // 2


@pytest.mark.parametrize("augment", ["minimal", "byol"])
@pytest.mark.parametrize(("side", "smallest_crop"), [(28, 0.2), (32, 0.08)])  # the paper's 0.08, raised below 32 px
def test_stage_views_follow_the_augment_setting(augment, side, smallest_crop):
    info = DataInfo("toy", side, 1, (0.5,), (0.25,), 10, 512)
    views = build("mae-ct-head", info=info, augment=augment).views
    colour = [type(f).__name__ for f in views.finishers]
    assert len(views) == 2
    if augment == "minimal":
        assert colour == ["Identity", "Identity"]
        assert all(tuple(c.scale) == (smallest_crop, 1.0) for c in views.crops)
    else:
        assert colour == ["Sequential", "Sequential"]


def test_a_plain_method_is_one_stage_in_the_run_folder():
    from hybridssl.methods.base import Stage

    run = resolve({"method": "mae", "epochs": 7, "method_args": {"mask_ratio": 0.6}})
    assert METHODS["mae"].stages(run) == [Stage("", "mae", dict(run.method_args), 7)]
