"""MIM-Refiner (methods/mim_refiner.py, docs/methods.md 10): the mechanisms a subtly wrong refiner gets wrong.

The NNA loss against a hand-written loop (only the positive swapped), which block feeds which head, the
order of lookup and enqueue, own-sample exclusion, what each stage freezes, the encoder EMA's direction
and momentum, loading the EMA, and the recipe. Tiny: a 4-block, 32-wide ViT on 28 px, batches of 8
(tests/methods/toy.py); the CLI run at the end takes ~2 s beside the shared tiny MAE fixture (~7 s).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from hybridssl.config import resolve
from hybridssl.data.sources import DataInfo
from hybridssl.errors import CheckpointError, ConfigError
from hybridssl.losses import nnclr
from hybridssl.methods import METHODS, Batch
from hybridssl.methods.mim_refiner import IDHead, default_taps, nn_alignment
from hybridssl.nn.encoder_ema import EncoderEMA, half_life_momentum
from hybridssl.nn.vit import pool, set_grad_checkpointing
from hybridssl.shipped_configs import shipped_configs
from hybridssl.weights.loading import load_trained_encoder
from tests.methods import toy
from tests.methods.toy import batch, optimizer, snapshot, train_step

DEPTH = 4
TAPS = [1, 2]
build = partial(toy.build, depth=DEPTH, blocks=TAPS, queue_size=64)


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ the loss


def reference_nna(z: torch.Tensor, n: torch.Tensor, p: torch.Tensor, tau: float) -> float:
    """The paper's loss for one ordered view pair, element by element: row i's positive is <nn(z_i), p_i>,
    its negatives <z_i, p_k>, all unit vectors."""
    z, n, p = (F.normalize(t.double(), dim=1) for t in (z, n, p))
    total = 0.0
    for i in range(len(z)):
        logits = [float(n[i] @ p[k] if k == i else z[i] @ p[k]) / tau for k in range(len(p))]
        total += -logits[i] + math.log(sum(math.exp(v) for v in logits))
    return total / len(z)


def test_nna_swaps_only_the_positive():
    torch.manual_seed(0)
    z, n, p = torch.randn(5, 4), torch.randn(5, 4), torch.randn(5, 4)
    loss = nn_alignment(z, n, p, 0.2).item()
    assert loss == pytest.approx(reference_nna(z, n, p, 0.2), rel=1e-5)
    all_swapped = nnclr(p, n, 0.2).item()  # NNCLR / MAE-CT / the paper's "allswap" ablation
    none_swapped = reference_nna(z, z, p, 0.2)
    assert abs(loss - all_swapped) > 1e-2 and abs(loss - none_swapped) > 1e-2


def test_nna_gradient_flows_only_through_the_predictions():
    torch.manual_seed(0)
    z, n, p = (torch.randn(4, 3, requires_grad=True) for _ in range(3))
    nn_alignment(z, n, p, 0.2).backward()
    assert z.grad is None and n.grad is None
    assert p.grad is not None and p.grad.abs().sum() > 0


def head_and_features(seed: int = 0, size: int = 6) -> tuple[IDHead, torch.Tensor, Batch]:
    torch.manual_seed(seed)
    head = IDHead(dim=8, proj_hidden=16, proj_dim=4, pred_hidden=16, queue_size=32).train()
    features = torch.randn(2 * size, 8)
    b = Batch([torch.zeros(size, 1, 1, 1)] * 2, torch.arange(size), torch.full((size,), -1))
    return head, features, b


def test_head_loss_pairs_each_views_neighbour_with_the_other_views_prediction():
    head, features, b = head_and_features()
    queue_before = head.queue.features.clone()
    loss, _ = head(features, b, 0.2, topk=1, exclude_self=True)
    z = head.projector(features)  # BatchNorm on both views at once: the same batch statistics again
    p1, p2 = head.predictor(z).detach().chunk(2)
    z1, z2 = z.detach().chunk(2)
    n1, n2 = (queue_before[(F.normalize(q, dim=1) @ queue_before.T).argmax(1)] for q in (z1, z2))
    expected = (reference_nna(z1, n1, p2, 0.2) + reference_nna(z2, n2, p1, 0.2)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def recorded_lookups(queue) -> list[dict]:
    """Wraps `queue.nearest` to record, per call, the queue as it was, the query and what it returned."""
    calls: list[dict] = []
    nearest = queue.nearest

    def recording(query, ids=None, topk=1):
        seen = {"ptr": int(queue.ptr), "features": queue.features.clone(), "query": query.detach().clone(), "topk": topk}
        found, index = nearest(query, ids, topk)
        calls.append({**seen, "index": index.clone(), "ids": queue.ids[index].clone()})
        return found, index

    queue.nearest = recording
    return calls


def test_queue_gets_view_ones_projections_after_both_lookups():
    head, features, b = head_and_features()
    start = head.queue.features.clone()
    calls = recorded_lookups(head.queue)
    head(features, b, 0.2, topk=1, exclude_self=True)
    assert len(calls) == 2
    assert all(c["ptr"] == 0 and torch.equal(c["features"], start) for c in calls), "both views looked up before the enqueue"
    z1, z2 = head.projector(features).detach().chunk(2)
    assert torch.allclose(calls[0]["query"], z1) and torch.allclose(calls[1]["query"], z2)
    stored = head.queue.features[: len(z1)]
    assert torch.allclose(stored, F.normalize(z1, dim=1), atol=1e-5) and int(head.queue.ptr) == len(z1)
    assert not torch.allclose(stored, F.normalize(z2, dim=1), atol=1e-2)
    assert torch.equal(head.queue.ids[: len(z1)], b.ids)


@pytest.mark.parametrize("exclude_self", [True, False])
def test_own_samples_are_never_their_own_neighbour(exclude_self):
    head, features, b = head_and_features()
    head(features, b, 0.2, topk=1, exclude_self=exclude_self)  # the queue now holds this batch's view 1
    calls = recorded_lookups(head.queue)
    head(features, b, 0.2, topk=1, exclude_self=exclude_self)
    own = [bool((c["ids"] == b.ids).any()) for c in calls]
    if exclude_self:
        assert own == [False, False]
    else:  # the same projections are in the queue: without the exclusion view 1 finds itself
        assert own[0]


def test_heads_are_the_official_nnclr_heads():
    """GELU, no Linear bias, a BatchNorm after the last layer of both (MAE-CT's: ReLU, no predictor BN),
    the paper's 2048 / 4096 / 256 widths at ViT-B width."""
    head = toy.build_at_vit_b_width("mim-refiner-head").heads["final"]
    layers = ["Linear", "BatchNorm1d", "GELU"]
    assert [type(m).__name__ for m in head.projector] == layers * 2 + layers[:2]
    assert [type(m).__name__ for m in head.predictor] == layers + layers[:2]
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert all(m.bias is None for m in linears) and head.predictor[-1].affine
    assert [m.out_features for m in linears] == [2048, 2048, 256, 4096, 256] and head.queue.size == 128


# ------------------------------------------------------------------ which block feeds which head


def per_head_losses(method, b: Batch) -> dict[str, float]:
    return {k: v.item() for k, v in method(b).items() if k.startswith("loss_")}


@pytest.mark.parametrize("perturbed", [0, 1, 2, 3, "norm"])
def test_each_head_reads_its_own_block(perturbed):
    """Changing block j's weights changes exactly the heads on blocks >= j and the final head; changing
    the final norm changes only the final head (the taps read the raw residual stream)."""
    method = build("mim-refiner-head").train()
    b = batch(method, 8)
    other = copy.deepcopy(method)
    module = other.encoder.norm if perturbed == "norm" else other.encoder.blocks[perturbed]
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.5 * torch.randn_like(p))
    before, after = per_head_losses(method, b), per_head_losses(other, b)
    changed = {k.removeprefix("loss_") for k in before if not math.isclose(before[k], after[k], rel_tol=1e-6)}
    expected = {"final"} if perturbed == "norm" else {"final"} | {f"block{t}" for t in TAPS if t >= perturbed}
    assert changed == expected


def test_tap_heads_get_the_pooled_raw_block_output_and_the_final_head_the_normed_output():
    method = build("mim-refiner-head").train()
    b = batch(method, 8)
    inputs = {}
    for name, head in method.heads.items():
        head.projector[0].register_forward_hook(lambda m, args, out, name=name: inputs.__setitem__(name, args[0]))
    method(b)
    enc = method.encoder
    images = torch.cat(b.views)
    with torch.no_grad():
        x = enc.patch_embed(images) + enc.pos_embed[:, 1:]
        x = torch.cat([(enc.cls_token + enc.pos_embed[:, :1]).expand(len(x), -1, -1), x], dim=1)
        raw = []
        for block in enc.blocks:
            x = block(x)
            raw.append(x)
        assert torch.allclose(inputs["final"], enc.norm(raw[-1])[:, 0], atol=1e-5)
        for t in TAPS:
            assert torch.allclose(inputs[f"block{t}"], raw[t][:, 0], atol=1e-5), t
    assert method.resolved["blocks"] == TAPS and list(method.heads) == ["final", "block1", "block2"]


def test_mean_patch_pooling_reaches_every_head():
    method = build("mim-refiner-head", pooling="mean_patch").train()
    b = batch(method, 8)
    features = method.features(b)
    with torch.no_grad():
        assert torch.allclose(features["final"], pool(method.encoder(torch.cat(b.views)), "mean_patch"), atol=1e-5)


def test_default_taps_and_bad_ones():
    assert default_taps(24) == list(range(16, 23))  # the paper's ViT-L taps 16-22 (+ the output)
    assert default_taps(12) == [8, 9, 10] and default_taps(6) == [4] and default_taps(2) == []
    assert toy.build("mim-refiner-head", depth=6).resolved["blocks"] == [4]
    with pytest.raises(ConfigError, match="method_args.blocks"):
        build("mim-refiner-head", blocks=[1, DEPTH])
    with pytest.raises(ValueError, match="once"):
        build("mim-refiner-head", blocks=[1, 1])


def test_checkpointed_blocks_give_the_same_tapped_losses_and_gradients():
    results = []
    for checkpointed in (False, True):
        method = build("mim-refiner-tune").train()
        set_grad_checkpointing(method, checkpointed)
        losses = method(batch(method, 8))
        losses["loss"].backward()
        grads = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
        results.append(({k: v.item() for k, v in losses.items()}, grads))
    (losses, grads), (losses_ckpt, grads_ckpt) = results
    assert losses == pytest.approx(losses_ckpt) and grads.keys() == grads_ckpt.keys()
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], msg=name)


# ------------------------------------------------------------------ what each stage trains


def test_head_stage_freezes_the_whole_encoder_and_trains_every_head():
    m = build("mim-refiner-head")
    assert not any(p.requires_grad for p in m.encoder.parameters())
    m.train()
    assert not m.encoder.patch_embed.training and not any(b.training for b in m.encoder.blocks)
    assert m.topk == 1 and m.cfg.temperature == 0.2 and m.pooling == "cls" and m.lr_views == 1
    before = snapshot(m)
    train_step(m, batch(m, 8), optimizer(m))
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    for name in m.heads:
        for part in ("projector.0.weight", "predictor.0.weight"):
            assert not torch.equal(before[f"heads.{name}.{part}"], after[f"heads.{name}.{part}"]), (name, part)


def test_tune_stage_trains_the_whole_encoder_by_default():
    m = build("mim-refiner-tune")
    trainable = {n for n, p in m.encoder.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in m.encoder.named_parameters()}  # patch embedding, CLS and norm included
    before = snapshot(m)
    train_step(m, batch(m, 8), optimizer(m))
    after = m.state_dict()
    for key in ("encoder.patch_embed.proj.weight", "encoder.cls_token", "encoder.norm.weight",
                *(f"encoder.blocks.{b}.mlp.fc1.weight" for b in range(DEPTH))):  # fmt: skip
        assert not torch.equal(before[key], after[key]), key


def test_tune_stage_freezes_lower_blocks_when_asked():
    m = build("mim-refiner-tune", frozen_blocks=2)
    before = snapshot(m)
    train_step(m, batch(m, 8), optimizer(m))
    after = m.state_dict()
    frozen = ("encoder.patch_embed", "encoder.cls_token", "encoder.blocks.0.", "encoder.blocks.1.")
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(frozen))
    assert not torch.equal(before["encoder.blocks.2.attn.qkv.weight"], after["encoder.blocks.2.attn.qkv.weight"])
    with pytest.raises(ConfigError, match="method_args.frozen_blocks"):
        build("mim-refiner-tune", frozen_blocks=DEPTH + 1)


def test_tune_stage_layerwise_lr_and_head_groups():
    m = build("mim-refiner-tune", head_lr_scale=2.0)
    groups = m.param_groups(0.05)
    seen = set()
    for g in groups:
        for name in g["names"]:
            seen.add(name)
            if name.startswith("encoder.blocks."):
                assert g["lr_scale"] == pytest.approx(0.65 ** (DEPTH - int(name.split(".")[2]))), name
            elif name.startswith(("encoder.patch_embed", "encoder.cls_token")):
                assert g["lr_scale"] == pytest.approx(0.65 ** (DEPTH + 1)), name
            elif name.startswith("encoder.norm"):
                assert g["lr_scale"] == 1.0
            else:
                assert name.startswith("heads.") and g["lr_scale"] == 2.0 and g["weight_decay"] in (0.0, 1e-5), name
    assert any(g["weight_decay"] == 0.05 for g in groups)
    assert not any(n.startswith("encoder_ema") for n in seen)
    assert seen == {n for n, p in m.named_parameters() if p.requires_grad}


def test_topk_is_the_papers_scaled_to_the_queue_and_reaches_every_lookup():
    big = DataInfo("toy", 28, 1, (0.5,), (0.25,), 10, num_images=1_000_000)
    assert toy.build("mim-refiner-tune", info=big).topk == 20
    fmnist = DataInfo("toy", 28, 1, (0.5,), (0.25,), 10, num_images=60_000)
    m = toy.build("mim-refiner-tune", info=fmnist)
    assert m.heads["final"].queue.size == 15_000 and m.topk == 5 and m.resolved["topk"] == 5
    m = build("mim-refiner-tune", topk=3).train()
    calls = [recorded_lookups(head.queue) for head in m.heads.values()]
    m(batch(m, 8))
    assert [c["topk"] for head_calls in calls for c in head_calls] == [3] * 6


# ------------------------------------------------------------------ the encoder EMA


def test_encoder_ema_follows_the_encoder_and_never_leads_it():
    """The EMA moves towards the encoder after the step; the encoder and the loss are the same whatever
    the EMA holds (it is never in the loss, and never written into the encoder)."""
    m = build("mim-refiner-tune", ema_momentum=0.9)
    other = copy.deepcopy(m)
    with torch.no_grad():
        for p in other.encoder_ema.parameters():
            p.add_(1.0)
    ema_before = snapshot(other.encoder_ema.module)
    results = []
    for method in (m, other):
        b = batch(method, 8)
        torch.manual_seed(1)
        results.append(train_step(method, b, optimizer(method))["loss"].item())
    assert results[0] == results[1]
    for key, value in m.encoder.state_dict().items():
        assert torch.equal(value, other.encoder.state_dict()[key]), key
    encoder, ema = other.encoder.state_dict(), other.encoder_ema.module.state_dict()
    for name, _ in other.encoder.named_parameters():
        torch.testing.assert_close(ema[name], 0.9 * ema_before[name] + 0.1 * encoder[name], msg=name)


def test_half_life_momentum_gives_the_papers_value_at_the_papers_length():
    assert half_life_momentum(30 * 1251) == pytest.approx(0.9999, abs=2e-7)  # ViT-L/16 stage 3: 30 epochs at 1024
    assert half_life_momentum(1000, 0.1) == pytest.approx(0.5 ** (1 / 100))
    assert half_life_momentum(2, 0.1) == 0.5  # a half-life of at least one step


def test_ema_momentum_is_sized_from_the_runs_steps_and_survives_a_resume():
    source = torch.nn.Linear(3, 3)
    ema = EncoderEMA(source, momentum=None, half_life=0.2)
    with torch.no_grad():
        source.weight.add_(1.0)
    old = ema.module.weight.clone()
    ema.step(source, progress=1 / 50)  # step 1 of 50: half-life 10 steps
    m = 0.5 ** (1 / 10)
    torch.testing.assert_close(ema.module.weight, m * old + (1 - m) * source.weight)
    resumed = EncoderEMA(source, momentum=None, half_life=0.2)
    resumed.load_state_dict(ema.state_dict())
    assert int(resumed.updates) == 1
    resumed.updates.fill_(30)  # the count a resume at step 30 of 50 restores
    assert resumed.momentum_at(30 / 50) == pytest.approx(m)
    assert EncoderEMA(source, momentum=0.9999).momentum_at(0.5) == 0.9999


def test_init_from_restarts_the_ema_from_the_loaded_encoder():
    m = build("mim-refiner-tune")
    with torch.no_grad():
        m.encoder.blocks[0].mlp.fc1.weight.add_(1.0)  # as if loaded
    m.encoder_ema.updates.fill_(7)
    m.after_init_from({"encoder.blocks.0.mlp.fc1.weight", "encoder_ema.module.blocks.0.mlp.fc1.weight"})
    assert all(torch.equal(a, b) for a, b in zip(m.encoder_ema.module.parameters(), m.encoder.parameters(), strict=True))
    assert int(m.encoder_ema.updates) == 0


def test_mae_ct_keeps_an_encoder_ema_only_when_asked_with_its_own_momentum():
    assert toy.build("mae-ct-tune", depth=DEPTH).encoder_ema is None
    m = toy.build("mae-ct-tune", depth=DEPTH, encoder_ema=True, ema_momentum=0.5)
    assert {id(e) for e, _ in m.momentum_pairs()} == {id(m.target_projector), id(m.encoder_ema)}
    ema_before, target_before = snapshot(m.encoder_ema.module), m.target_projector.module[0].weight.clone()
    train_step(m, batch(m, 8), optimizer(m))
    block = "blocks.3.mlp.fc1.weight"
    ema, encoder = m.encoder_ema.module.state_dict(), m.encoder.state_dict()
    torch.testing.assert_close(ema[block], 0.5 * ema_before[block] + 0.5 * encoder[block])
    torch.testing.assert_close(m.target_projector.module[0].weight, 0.99 * target_before + 0.01 * m.projector[0].weight)


# ------------------------------------------------------------------ loading the EMA


def save_checkpoint(method, path) -> None:
    """The parts of an engine checkpoint that weights.loading reads."""
    meta = {"config": {"method": method.name, "model": "vit-pico"}, "encoder": method.encoder.cfg.to_dict(),
            "data_info": asdict(method.info), "pooling": method.pooling}  # fmt: skip
    torch.save({"state_dict": {f"method.{k}": v for k, v in method.state_dict().items()}, "hybridssl": meta}, path)


def test_load_trained_encoder_reads_the_ema_or_says_there_is_none(tmp_path):
    m = build("mim-refiner-tune")
    with torch.no_grad():
        for p in m.encoder_ema.parameters():
            p.mul_(0.5)
    save_checkpoint(m, tmp_path / "tune.ckpt")
    for ema, expected in ((True, m.encoder_ema.module), (False, m.encoder)):
        loaded = load_trained_encoder(tmp_path / "tune.ckpt", ema=ema).encoder
        assert all(torch.equal(a, b) for a, b in zip(loaded.parameters(), expected.parameters(), strict=True)), ema
    save_checkpoint(build("mim-refiner-head"), tmp_path / "head.ckpt")
    with pytest.raises(CheckpointError, match="holds no EMA of its encoder"):
        load_trained_encoder(tmp_path / "head.ckpt", ema=True)


# ------------------------------------------------------------------ the recipe and its configs


def plan(**flags):
    stages = METHODS["mim-refiner"].stages(resolve({"method": "mim-refiner", **flags}))
    return [(s.folder, s.method, s.epochs) for s in stages], stages


def test_recipe_stages_and_their_epochs():
    assert plan(epochs=1600)[0] == [("stage1-mae", "mae", 1600), ("stage2-head", "mim-refiner-head", 20),
                                   ("stage3-tune", "mim-refiner-tune", 30)]  # fmt: skip
    assert [e for *_, e in plan(epochs=100)[0]] == [100, 5, 10]
    assert [e for *_, e in plan(epochs=3)[0]] == [3, 3, 3]
    assert [f for f, *_ in plan(init_from="mae.ckpt", epochs=100)[0]] == ["stage2-head", "stage3-tune"]


def test_recipe_shares_the_head_settings_and_gives_stage_two_top1():
    args = {"blocks": [1, 2], "queue_size": 4096, "temperature": 0.3, "ema_momentum": 0.999,
            "head_optim": {"base_lr": 0.01}, "mae": {"mask_ratio": 0.6}}  # fmt: skip
    _, (mae, head, tune) = plan(epochs=10, method_args=args)
    assert mae.method_args["mask_ratio"] == 0.6 and head.optim == {"base_lr": 0.01} and tune.optim == {}
    assert head.method_args["topk"] == 1 and tune.method_args["topk"] is None
    for key, value in (("blocks", [1, 2]), ("queue_size", 4096), ("temperature", 0.3)):
        assert head.method_args[key] == tune.method_args[key] == value
    assert "ema_momentum" not in head.method_args and tune.method_args["ema_momentum"] == 0.999
    with pytest.raises(ConfigError, match="method_args.tune_optim"):
        resolve({"method": "mim-refiner", "method_args": {"tune_optim": {"base_lr": -1}}})


def test_stage_optimizers_are_the_papers():
    head, tune = METHODS["mim-refiner-head"].run_defaults["optim"], METHODS["mim-refiner-tune"].run_defaults["optim"]
    assert (head["base_lr"], head["weight_decay"], tune["base_lr"], tune["weight_decay"]) == (2e-4, 1e-5, 4e-4, 0.05)
    assert head["betas"] == tune["betas"] == (0.9, 0.95)


def test_the_paper_l16_config():
    run = resolve({}, shipped_configs()["mim-refiner/imagenet-vit-l16"])
    assert (run.model, run.image_size, run.patch_size, run.batch_size) == ("vit-large", 224, 16, 128)
    mae, head, tune = METHODS["mim-refiner"].stages(run)
    assert tune.method_args["blocks"] == list(range(16, 23)) and tune.method_args["temperature"] == 0.2
    assert (head.epochs, tune.epochs, tune.method_args["topk"], tune.method_args["ema_momentum"]) == (20, 30, 20, 0.9999)
    assert head.optim == tune.optim == {"warmup_epochs": 4} and tune.method_args["queue_size"] == 65536


@pytest.mark.slow
def test_the_paper_l16_config_builds_eight_paper_sized_heads():
    from hybridssl.engine.stages import stage_config
    from hybridssl.methods.base import build_method

    run = resolve({"init_from": "mae_pretrain_vit_large.pth"}, shipped_configs()["mim-refiner/imagenet-vit-l16"])
    info = DataInfo("folder", 224, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1000, num_images=1_281_167)
    tune = build_method(stage_config(run, METHODS["mim-refiner"].stages(run)[1], None), info)
    assert list(tune.heads) == ["final", *(f"block{b}" for b in range(16, 23))] and tune.topk == 20
    head = tune.heads["block16"]
    assert (head.projector[0].out_features, head.predictor[0].out_features, head.queue.size) == (2048, 4096, 65536)
    assert tune.encoder_ema.momentum == 0.9999


def test_the_recipe_runs_from_the_cli_on_a_tiny_mae(fmnist_dir, tiny_mae_run, tmp_path):
    """hybridssl pretrain --method mim-refiner --init-from <MAE ckpt> --max-steps 2: both stages train,
    stage 3's checkpoint holds the encoder EMA, and the EMA loads apart from the encoder."""
    import yaml

    from hybridssl.cli import main
    from hybridssl.weights.ours import load_checkpoint

    args = ["pretrain", "--method", "mim-refiner", "--init-from", str(tiny_mae_run / "checkpoints" / "last.ckpt"),
            "--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir), "--batch-size", "16", "--max-steps", "2",
            "--accelerator", "cpu", "--no-progress-bar", "--output", str(tmp_path), "--set", "log_every_n_steps=1"]  # fmt: skip
    assert main(args) == 0
    tuned = tmp_path / "stage3-tune" / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(tuned)
    assert ckpt["global_step"] == 2 and any(k.startswith("method.encoder_ema.module.") for k in ckpt["state_dict"])
    config = yaml.safe_load((tmp_path / "stage3-tune" / "config.yaml").read_text())["method_args"]
    assert config["blocks"] == [4] and config["topk"] == 5 and config["queue_size"] == 128
    rows = (tmp_path / "stage3-tune" / "logs" / "csv" / "metrics.csv").read_text().splitlines()
    assert "train/loss_final" in rows[0] and "train/loss_block4" in rows[0]
    ema, encoder = (load_trained_encoder(tuned, ema=e).encoder for e in (True, False))
    assert not torch.equal(ema.blocks[5].mlp.fc1.weight, encoder.blocks[5].mlp.fc1.weight)
    mae = load_checkpoint(tiny_mae_run / "checkpoints" / "last.ckpt")["state_dict"]
    head = load_checkpoint(tmp_path / "stage2-head" / "checkpoints" / "last.ckpt")["state_dict"]
    frozen, trained = "method.encoder.blocks.0.attn.qkv.weight", "method.heads.block4.projector.0.weight"
    assert torch.equal(head[frozen], mae[frozen])  # stage 2 started from the MAE and left its encoder alone
    assert not torch.equal(head[trained], ckpt["state_dict"][trained])  # stage 3 went on training stage 2's heads
