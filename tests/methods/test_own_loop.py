"""The guards for training loops of one's own (methods/own_loop.py): a loop that ignores the groups'
`lr_scale` or skips `after_step` is warned once, with what to do; a loop that does what the engine
does, fine-tuning, and the engine itself (a run and its resume) are never warned."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from hybridssl.data.sources import ImageSet
from hybridssl.evaluation.finetune import FinetuneSettings, finetune
from hybridssl.methods import METHODS, Batch, Method
from hybridssl.methods.own_loop import OwnLoopWarning, notes_steps
from hybridssl.nn.vit import ViT, vit_config
from hybridssl.weights.ours import load_checkpoint
from tests.conftest import pretrain_tiny, toy_images
from tests.methods.toy import INFO, batch, build, optimizer, train_step


pytestmark = pytest.mark.usefixtures("one_thread")


@contextmanager
def own_loop_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Every OwnLoopWarning raised inside (none filtered away as a repeat), and no other warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("ignore")
        warnings.simplefilter("always", OwnLoopWarning)
        yield caught


def tune(**args: Any) -> Method:
    """mae-ct-tune on the toy ViT: block 1 (x0.65), final norm and heads (x1) train; an EMA projector."""
    return build("mae-ct-tune", queue_size=32, **args).train()


def step(method: Method, opt: torch.optim.Optimizer, b: Batch | None = None) -> None:
    """Forward, backward and optimizer step, without after_step."""
    losses = method(b or batch(method))
    opt.zero_grad()
    losses["loss"].backward()
    opt.step()


def test_the_method_under_test_has_layer_decay_and_an_after_step() -> None:
    """The warnings below need both; with one scale alone the lr check has nothing to tell."""
    method = tune()
    assert {g["lr_scale"] for g in method.param_groups(0.05)} == {0.65, 1.0}
    assert notes_steps(type(method).after_step) and not notes_steps(type(build("mae")).after_step)


def test_groups_given_as_they_come_are_warned_at_the_users_step() -> None:
    method = tune()
    opt = torch.optim.AdamW(method.param_groups(0.05), lr=1e-3)  # every group at 1e-3: the scales are lost
    with own_loop_warnings() as caught:
        for _ in range(3):
            step(method, opt)
            method.after_step(0.5)
    assert len(caught) == 1, "warned once, not at every step"
    message = str(caught[0].message)
    assert "ignores lr_scale" in message and "base_lr * group['lr_scale']" in message
    assert caught[0].filename == __file__, "the warning points at the loop's optimizer.step(), not into torch"


def test_a_schedule_that_sets_one_lr_in_every_group_is_warned() -> None:
    """Scales set right at first and lost by a hand-written schedule: the check runs at every step."""
    method = tune()
    opt = optimizer(method, lr=1e-3)
    with own_loop_warnings() as caught:
        train_step(method, batch(method), opt)
        assert not caught, [str(w.message) for w in caught]
        for group in opt.param_groups:
            group["lr"] = 5e-4
        train_step(method, batch(method), opt)
    assert len(caught) == 1 and "ignores lr_scale" in str(caught[0].message)


@pytest.mark.parametrize("name", ["mae-ct-tune", "mocov3", "toy-queue-ema"])
@pytest.mark.parametrize("kind", ["fused", "foreach"])
def test_a_loop_without_after_step_is_warned_once(name: str, kind: str) -> None:
    """The fused AdamW does not bump parameter versions: the guard counts optimizer steps instead."""
    method = build(name, **({"queue_size": 32} if "queue_size" in METHODS[name].Config.model_fields else {})).train()
    groups = method.param_groups(0.05)
    for group in groups:
        group["lr"] = 1e-3 * group["lr_scale"]
    opt = torch.optim.AdamW(groups, lr=1e-3, **{kind: True})
    with own_loop_warnings() as caught:
        step(method, opt)
        assert not caught, "one step is not yet a sign: after_step may follow"
        for _ in range(3):
            step(method, opt)
    assert len(caught) == 1
    assert str(caught[0].message) == (f"{name} ran an optimizer step without after_step(progress): its EMA/queue/momentum "
                                      "updates are skipped; call method.after_step(progress) after each optimizer step")  # fmt: skip


def test_a_loop_that_does_what_the_engine_does_is_quiet() -> None:
    """lr x lr_scale under a warmup + cosine LambdaLR (down to 0), after_step after each step, with
    gradient accumulation; then two optimizers (encoder, head) stepping before one after_step."""
    method = tune()
    opt = optimizer(method, lr=1e-3)
    total, warmup = 6, 2
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))
    )
    with own_loop_warnings() as caught:
        for s in range(total):
            for _ in range(2):  # two micro-batches per optimizer step
                method(batch(method, seed=s))["loss"].backward()
            opt.step()
            opt.zero_grad()
            schedule.step()
            method.after_step((s + 1) / total)
        groups = method.param_groups(0.05)
        for group in groups:
            group["lr"] = 1e-3 * group["lr_scale"]
        encoder = torch.optim.AdamW([g for g in groups if g["names"][0].startswith("encoder.")], fused=True)
        head = torch.optim.AdamW([g for g in groups if not g["names"][0].startswith("encoder.")], fused=True)
        for s in range(3):
            loss = method(batch(method, seed=s))["loss"]
            loss.backward()
            encoder.step()
            head.step()
            method.after_step(0.5)
    assert opt.param_groups[0]["lr"] == 0.0, "the schedule ran to its end"
    assert not caught, [str(w.message) for w in caught]


def test_methods_without_per_step_work_or_layer_decay_are_not_watched() -> None:
    """MAE: one lr scale (1) and no after_step; each group's lr is the loop's own choice then."""
    method = build("mae").train()
    groups = method.param_groups(0.05)
    for i, group in enumerate(groups):
        group["lr"] = 1e-3 / (i + 1)
    opt = torch.optim.AdamW(groups, lr=1e-3)
    with own_loop_warnings() as caught:
        for _ in range(3):
            step(method, opt)
    assert not caught, [str(w.message) for w in caught]


def test_finetuning_with_layer_decay_is_quiet() -> None:
    """evaluation/finetune.py sets lr x lr_scale per group and schedules all alike."""
    build("mae")  # a Method built in this process: the guards are installed
    x, y = toy_images(64, size=28, num_classes=4)
    images, labels = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y).long()
    encoder = ViT(vit_config("vit-pico", 28, 1, embed_dim=32, depth=2, num_heads=2))
    settings = FinetuneSettings(epochs=2, batch_size=32, layer_decay=0.5)
    with own_loop_warnings() as caught:
        result = finetune(encoder, ImageSet(images, labels), ImageSet(images[:32], labels[:32]), INFO, 4, "mean_patch", settings)
    assert result.steps == 4
    assert not caught, [str(w.message) for w in caught]


def test_the_engine_is_quiet_in_a_run_and_its_resume(fmnist_dir, tmp_path) -> None:
    """Layer decay, an EMA projector and a queue through Lightning: 2 steps, then resumed to 4."""
    extra = ("--set", "method_args.queue_size=48", "--set", "method_args.layer_decay=0.5")
    with own_loop_warnings() as caught:
        pretrain_tiny(fmnist_dir, tmp_path, "mae-ct-tune", 2, *extra)
        pretrain_tiny(fmnist_dir, tmp_path, "mae-ct-tune", 4, "--resume", *extra)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert not caught, [str(w.message) for w in caught]
