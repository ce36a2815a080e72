"""Guards for training loops of one's own: a loop that drops what the engine does for a method is
warned, once, instead of training something else than the method without a sign.

Two things the engine does that a hand-written loop can forget (examples/own_training_loop.py):

- the lr of each parameter group is the base lr times its `lr_scale` (layer-wise lr decay, a head's
  own lr). An optimizer given `method.param_groups(wd)` as they come gives every group the same lr:
  checked before every optimizer step (a global step pre-hook), because a schedule that later sets
  one lr in all groups loses the scales just the same;
- `method.after_step(progress)` after each optimizer step (EMA targets, queues, momentum schedules).
  A method whose class overrides `after_step` is watched: a global step post-hook notes each step of
  an optimizer that holds its parameters, `after_step` clears the notes, and a second step of the
  same optimizer with no `after_step` between them is the sign. Parameter versions cannot tell,
  because the fused AdamW kernel updates weights without bumping `_version` (torch 2.x).

The hooks are installed on the first Method built and cost a few dict look-ups per optimizer step;
the engine (engine/module.py) and fine-tuning (evaluation/finetune.py) set lrs and call `after_step`
as asked, so they never warn.
"""

from __future__ import annotations

import functools
import math
import sys
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

__all__ = ["OwnLoopWarning", "notes_steps", "noting_after_step", "watch"]

LR_SCALE_MESSAGE = ("the optimizer ignores lr_scale: layer-wise lr decay does nothing; set each group's lr to "
                    "base_lr * group['lr_scale'] (and keep that ratio when a schedule changes the lrs), or remove "
                    "the 'lr_scale' key from groups whose lr you set on purpose")  # fmt: skip
AFTER_STEP_MESSAGE = ("{name} ran an optimizer step without after_step(progress): its EMA/queue/momentum updates are "
                      "skipped; call method.after_step(progress) after each optimizer step")  # fmt: skip
REL_TOL = 1e-6  # lr / lr_scale agree to float rounding when the lrs were set as base * scale


class OwnLoopWarning(UserWarning):
    """A training loop outside the engine drops part of what the method needs (filterable by class)."""


_installed = False
_watched: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # methods whose after_step does work
_warned_optimizers: weakref.WeakSet[Optimizer] = weakref.WeakSet()
_QUIET_DIRS = tuple(str(Path(m.__file__).resolve().parent) for m in (torch,))  # frames skipped for the warning's line


def _install() -> None:
    global _installed
    if not _installed:
        register_optimizer_step_pre_hook(_check_lr_scales)
        register_optimizer_step_post_hook(_note_step)
        _installed = True


def watch(method: nn.Module, needs_after_step: bool) -> None:
    """Called by every Method's constructor: installs the hooks (once per process) and watches the
    method's optimizer steps when its `after_step` does work."""
    _install()
    method._own_loop_stepped = set()  # ids of optimizers that stepped since the last after_step
    method._own_loop_warned = False
    if needs_after_step:
        _watched.add(method)


def noting_after_step(after_step: Callable[[Any, float], None]) -> Callable[[Any, float], None]:
    """`after_step` of a Method subclass, wrapped to clear the method's noted optimizer steps (the
    subclass's own code need not call anything)."""

    @functools.wraps(after_step)
    def wrapper(self: Any, progress: float) -> None:
        self.__dict__["_own_loop_stepped"] = set()
        after_step(self, progress)

    wrapper.__notes_steps__ = True  # type: ignore[attr-defined]
    return wrapper


def notes_steps(after_step: Any) -> bool:
    """Whether `after_step` (a class's) clears the noted steps: a method is watched only then, so an
    unwrapped replacement (a test's monkeypatch) never reads as a loop that skips it."""
    return bool(getattr(after_step, "__notes_steps__", False))


def _stacklevel() -> int:
    """The stack level of the first frame outside this file and torch: the user's `optimizer.step()`."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and (frame.f_code.co_filename == __file__ or frame.f_code.co_filename.startswith(_QUIET_DIRS)):
        level, frame = level + 1, frame.f_back
    return level


def _check_lr_scales(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
    """Step pre-hook: the groups that carry an `lr_scale` must share one lr / lr_scale."""
    if optimizer in _warned_optimizers:
        return
    ratios, scales = [], set()
    for group in optimizer.param_groups:
        scale, lr = group.get("lr_scale"), group.get("lr")
        if scale is None or lr is None or isinstance(lr, torch.Tensor) or scale <= 0:
            continue  # a tensor lr (capturable steps) is not read: that would sync with the device
        ratios.append(lr / scale)
        scales.add(scale)
    if len(scales) < 2:  # all scales alike (all 1: no layer decay): any lr honours them
        return
    if all(math.isclose(r, ratios[0], rel_tol=REL_TOL, abs_tol=1e-15) for r in ratios):
        return
    _warned_optimizers.add(optimizer)
    warnings.warn(LR_SCALE_MESSAGE, OwnLoopWarning, stacklevel=_stacklevel())


def _note_step(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
    """Step post-hook: notes the step on every watched method the optimizer trains; a second step of
    the same optimizer before `after_step` cleared the notes warns."""
    if not _watched:
        return
    for method in list(_watched):
        if method._own_loop_warned or not _trains(optimizer, method):
            continue
        stepped = method._own_loop_stepped
        if id(optimizer) in stepped:
            method._own_loop_warned = True
            warnings.warn(AFTER_STEP_MESSAGE.format(name=getattr(method, "name", type(method).__name__)), OwnLoopWarning,
                          stacklevel=_stacklevel())  # fmt: skip
        stepped.add(id(optimizer))


def _trains(optimizer: Optimizer, method: nn.Module) -> bool:
    """Whether the optimizer holds parameters of the method: the first of each group is looked up in
    the method's parameter ids (cached on the method; it holds its parameters, so ids stay theirs)."""
    ids = method.__dict__.get("_own_loop_param_ids")
    if ids is None:
        ids = frozenset(id(p) for p in method.parameters())
        method.__dict__["_own_loop_param_ids"] = ids
    return any(group["params"] and id(group["params"][0]) in ids for group in optimizer.param_groups)
