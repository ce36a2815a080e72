"""The Method contract (methods/base.py, docs/adding-a-method.md), checked for every registered method:
a new method (built in, or registered by a test module such as tests/extra_methods.py) is picked up
here without being named. Tiny: a 2-block, 32-wide ViT on 28 px, batch 4 (tests/methods/toy.py).

What each method's own tests cannot forget this way: views of the batch's size; a finite scalar "loss"
among named scalar losses; a gradient for every trainable parameter unless the method declares
`find_unused_parameters` (DDP fails on one that gets none) and none for frozen ones; optimizer groups
that hold each trainable parameter exactly once, leave the frozen ones out and carry an `lr_scale`;
`after_step` that moves only EMA copies, each listed in `momentum_pairs` (what `--init-from` resets)
and moving towards its online module; and all state in the state dict, so a resume continues exactly.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hybridssl.config import resolve
from hybridssl.methods import METHODS, Batch, Method
from hybridssl.nn.masking import Mask
from hybridssl.nn.momentum import EMA
from hybridssl.nn.vit import ViT
from tests.methods.toy import build, optimizer, snapshot

SIZE = 4
METHOD_NAMES = sorted(name for name, cls in METHODS.items() if issubclass(cls, Method))
RECIPE_NAMES = sorted(name for name, cls in METHODS.items() if not issubclass(cls, Method))


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(name: str, seed: int = 0) -> Method:
    cls = METHODS[name]
    queue = {"queue_size": 16} if "queue_size" in cls.Config.model_fields else {}  # holds a few batches of 4
    return build(name, seed=seed, **queue).train()


def a_batch(method: Method, seed: int = 0) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (SIZE, 1, 28, 28), dtype=torch.uint8, generator=generator)
    torch.manual_seed(seed)
    return Batch(method.views(images), torch.arange(SIZE) + SIZE * seed, torch.arange(SIZE) % 10)


def test_every_registered_name_is_covered() -> None:
    assert set(METHOD_NAMES) | set(RECIPE_NAMES) == set(METHODS) and "toy-queue-ema" in METHOD_NAMES


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_forward_gives_named_finite_losses_and_gradients_where_they_belong(name: str) -> None:
    method = tiny(name)
    assert method.name == name and isinstance(method.encoder, ViT)
    assert method.pooling in ("cls", "mean_patch") and method.lr_views >= 1
    b = a_batch(method)
    assert b.views and all(v.shape[0] == SIZE and v.is_floating_point() for v in b.views)
    losses = method(b)
    assert "loss" in losses and losses["loss"].requires_grad
    for key, value in losses.items():
        assert value.dim() == 0 and math.isfinite(value.item()), f"{key}: a finite scalar"
    losses["loss"].backward()
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    no_grad = sorted(n for n, p in method.named_parameters() if p.requires_grad and p.grad is None)
    assert not no_grad or type(method).find_unused_parameters, f"no gradient (DDP would fail): {no_grad[:3]}"
    assert trainable, "nothing to train"
    assert all(p.grad is None for p in method.parameters() if not p.requires_grad), "a frozen parameter got a gradient"


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_param_groups_hold_each_trainable_parameter_once(name: str) -> None:
    method = tiny(name)
    groups = method.param_groups(0.05)
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in method.parameters() if p.requires_grad]
    assert len(grouped) == len(set(grouped)), "a parameter in two groups"
    assert set(grouped) == set(trainable), "groups must hold every trainable parameter and no frozen one"
    for group in groups:
        assert group["lr_scale"] > 0 and group["weight_decay"] >= 0
        if any(p.ndim <= 1 for p in group["params"]):  # norms and biases are not decayed
            assert group["weight_decay"] == 0


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_after_step_moves_only_ema_copies_and_towards_their_modules(name: str) -> None:
    method = tiny(name)
    pairs = method.momentum_pairs()
    modules = {id(m) for m in method.modules()}
    emas = [m for m in method.modules() if isinstance(m, EMA)]
    assert {id(e) for e, _ in pairs} == {id(e) for e in emas}, "every EMA copy is in momentum_pairs (--init-from resets them)"
    assert all(id(source) in modules and not any(p.requires_grad for p in e.parameters()) for e, source in pairs)
    opt = optimizer(method)
    method(a_batch(method))["loss"].backward()
    opt.step()
    before = snapshot(method)

    def gap(e: EMA, source: nn.Module) -> float:
        return sum((a - b).norm().item() for a, b in zip(e.parameters(), source.parameters(), strict=True))

    gaps = [gap(e, s) for e, s in pairs]
    method.after_step(0.5)
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    after = method.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in trainable), "after_step changed an online parameter"
    for (e, source), old in zip(pairs, gaps, strict=True):
        assert gap(e, source) < old, "an EMA copy did not move towards its module"


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_the_state_dict_carries_all_state(name: str) -> None:
    """After a step (queues written, EMA moved), another instance given the state dict computes the same."""
    trained = tiny(name, seed=0)
    opt = optimizer(trained)
    for s in range(2):
        trained(a_batch(trained, s))["loss"].backward()
        opt.step()
        opt.zero_grad()
        trained.after_step(0.5)
    fresh = tiny(name, seed=1)
    fresh.load_state_dict(trained.state_dict())
    loose = [f"{n}.{k}" for n, m in trained.named_modules() for k, v in vars(m).items() if isinstance(v, torch.Tensor)]
    assert not loose, f"tensors outside the state dict (lost on resume, not moved by .to()): {loose}"
    losses = []
    for method in (trained, fresh):
        b = a_batch(method, 2)
        torch.manual_seed(3)  # masks and neighbour picks draw alike
        losses.append({k: v.item() for k, v in method(b).items()})
    assert losses[0] == losses[1]
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in trained.state_dict().items()), "queues written alike"


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_reconstruct_when_offered(name: str) -> None:
    method = tiny(name).eval()
    if not method.reconstructs:
        assert method.reconstruct(torch.zeros(SIZE, 1, 28, 28)) is None
        return
    predicted, mask = method.reconstruct(torch.zeros(SIZE, 1, 28, 28))
    grid = method.encoder.cfg.num_patches
    assert isinstance(mask, Mask) and mask.mask.shape == (SIZE, grid)
    assert predicted.shape == (SIZE, grid, method.encoder.cfg.patch_size**2) and torch.isfinite(predicted).all()


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_recipe_stages_are_registered_methods(name: str) -> None:
    stages = METHODS[name].stages(resolve({"method": name, "max_steps": 1}))
    assert len(stages) >= 2 and all(issubclass(METHODS[s.method], Method) for s in stages)
