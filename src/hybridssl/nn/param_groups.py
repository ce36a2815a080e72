"""Optimizer parameter groups: no weight decay on norms, biases and tokens; layer-wise lr decay.

Below methods and evaluation alike: a method's `param_groups` and the fine-tuning protocol build
their groups here, and the engine only reads the `lr_scale` of each group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

TOKEN_NAMES = ("cls_token", "pos_embed", "mask_token", "reg_token")


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Norms, biases and tokens are not decayed (MAE, MoCo v3, CMAE)."""
    return param.ndim <= 1 or name.endswith(".bias") or name.rsplit(".", 1)[-1] in TOKEN_NAMES


def param_groups(
    named_params: Iterable[tuple[str, nn.Parameter]],
    weight_decay: float,
    lr_scale: Callable[[str], float] = lambda name: 1.0,
) -> list[dict[str, Any]]:
    """Trainable parameters grouped by (decayed or not, lr scale); frozen ones are left out."""
    groups: dict[tuple[bool, float], dict[str, Any]] = {}
    for name, param in named_params:
        if not param.requires_grad:
            continue
        decay = not no_weight_decay(name, param)
        scale = lr_scale(name)
        group = groups.setdefault(
            (decay, scale), {"params": [], "names": [], "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale}
        )
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def layer_decay(depth: int, decay: float, prefix: str = "encoder.") -> Callable[[str], float]:
    """lr scale per encoder parameter, exponents as MAE-CT and MAE fine-tuning code them (docs/methods.md A5).

    Stem (patch embedding, CLS, positions, registers): decay^(depth + 1); block b: decay^(depth - b); everything
    else under `prefix` (the final norm) and every parameter outside it: 1.
    """

    def scale(name: str) -> float:
        if not name.startswith(prefix):
            return 1.0
        rest = name[len(prefix) :]
        if rest.startswith(("patch_embed", "cls_token", "pos_embed", "reg_token")):
            return decay ** (depth + 1)
        if rest.startswith("blocks."):
            return decay ** (depth - int(rest.split(".")[1]))
        return 1.0

    return scale
