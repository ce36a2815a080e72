"""MLP projectors and predictors: one builder covers NNCLR, MoCo v3, CMAE, SimCLR, CAN and MACRL heads.

Hidden layers are Linear -> BatchNorm -> ReLU; the last layer is Linear with an optional BatchNorm
(affine or not). Call a head once per view when BatchNorm statistics must be per view (MAE-CT, NNCLR).
"""

from __future__ import annotations

from typing import Literal

from torch import nn

LastNorm = Literal["none", "affine", "nonaffine"]  # LAST_NORMS, checked at run time too
LAST_NORMS = ("none", "affine", "nonaffine")


def mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    num_layers: int = 2,
    hidden_bias: bool = False,
    last_bias: bool = False,
    last_norm: LastNorm = "none",
) -> nn.Sequential:
    """Examples (docs/methods.md 7.1):

    >>> nnclr_projector = mlp(768, 2048, 256, num_layers=3, last_norm="affine")
    >>> nnclr_predictor = mlp(256, 4096, 256)
    >>> mocov3_projector = mlp(768, 4096, 256, num_layers=3, last_norm="nonaffine")
    >>> cmae_projector = mlp(768, 1536, 256, hidden_bias=True)
    """
    if num_layers < 1:
        raise ValueError(f"an MLP needs at least one layer, got {num_layers}")
    if last_norm not in LAST_NORMS:
        raise ValueError(f"last_norm must be one of {LAST_NORMS}, got {last_norm!r}")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(dim, hidden_dim, bias=hidden_bias), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=last_bias))
    if last_norm != "none":
        layers.append(nn.BatchNorm1d(out_dim, affine=last_norm == "affine"))
    return nn.Sequential(*layers)


def head_width(paper_width: int, embed_dim: int) -> int:
    """A head's hidden width: the paper's for ViT-S and wider encoders (D >= 384); for narrower ones
    at most 8 x D, so that a ViT-pico (D 128) is not dwarfed by a 4096-wide head ([S] small scale)."""
    return paper_width if embed_dim >= 384 else min(paper_width, 8 * embed_dim)
