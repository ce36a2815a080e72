"""ViT encoder from timm blocks, with token dropping by index, a frozen-prefix option and activation
checkpointing, and optionally DINOv2's layer scale and register tokens.

Attribute names mirror `timm.models.vision_transformer.VisionTransformer`, so the state dict is
loadable by timm as is (see `weights/export.py`); with register tokens timm folds the CLS position
into `cls_token` (`timm_state_dict`).

Token layout: inside the blocks [CLS, registers, patches] (timm's and DINOv2's order); `forward`
returns [CLS, patches] unless asked for the registers, so everything downstream (pooling, MAE-style
decoders, `tokens[:, 1:]` as the patches) reads the same layout with or without registers. The
position table always has 1 + grid^2 rows (the CLS row first, zeros for our sin-cos table, the CLS
position for DINOv2's); registers get no position, as in timm and DINOv2.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Literal

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from hybridssl.nn.masking import gather_tokens
from hybridssl.nn.pos_embed import sincos_2d

Pooling = Literal["cls", "mean_patch"]

PRESETS: dict[str, dict[str, Any]] = {
    "vit-pico": {"embed_dim": 128, "depth": 6, "num_heads": 4},
    "vit-tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "vit-small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "vit-base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    # the released MAE / MAE-CT encoders (ViT-L/16, ViT-H/14), to start from with --init-from
    "vit-large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
    "vit-huge": {"embed_dim": 1280, "depth": 32, "num_heads": 16},
    # DINOv2's ViT-S/B/L (patch 14: --init-from gives it): layer scale (initialised at DINOv2's 1e-5),
    # without and with its 4 register tokens; a run takes its architecture from the presets only
    "vit-small-ls": {"embed_dim": 384, "depth": 12, "num_heads": 6, "init_values": 1e-5},
    "vit-small-ls-reg4": {"embed_dim": 384, "depth": 12, "num_heads": 6, "init_values": 1e-5, "reg_tokens": 4},
    "vit-base-ls": {"embed_dim": 768, "depth": 12, "num_heads": 12, "init_values": 1e-5},
    "vit-base-ls-reg4": {"embed_dim": 768, "depth": 12, "num_heads": 12, "init_values": 1e-5, "reg_tokens": 4},
    "vit-large-ls": {"embed_dim": 1024, "depth": 24, "num_heads": 16, "init_values": 1e-5},
    "vit-large-ls-reg4": {"embed_dim": 1024, "depth": 24, "num_heads": 16, "init_values": 1e-5, "reg_tokens": 4},
}


def default_patch_size(image_size: int) -> int:
    """4 px up to 32 px images (49-64 tokens), 8 px up to 96 px, 16 px beyond (ViT/16 at 224)."""
    return 4 if image_size <= 32 else 8 if image_size <= 96 else 16


MAX_IMAGE_SIDE = 224  # the resolution of the papers' ViTs: ViT/16's 196 tokens


def default_image_size(side: int) -> int:
    """The training resolution for images whose typical shorter side is `side` px: that side, at most
    224 (ViT/16's 196 tokens) and at least 16, rounded down to whole patches of `default_patch_size`.
    Small images keep their size (32 px: 64 tokens of 4 px) instead of being upsampled into hundreds
    of tokens, which costs compute and adds no detail."""
    size = min(max(side, 16), MAX_IMAGE_SIDE)
    patch = default_patch_size(size)
    return size // patch * patch


@dataclass(frozen=True)
class ViTConfig:
    image_size: int
    patch_size: int
    in_chans: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    drop_path: float = 0.0
    # timm's names: layer scale (`ls1.gamma`/`ls2.gamma` per block, initialised at init_values) when set,
    # and register tokens (`reg_token`, 1 x reg_tokens x D). Off by default: older configs are unchanged.
    init_values: float | None = None
    reg_tokens: int = 0

    def __post_init__(self) -> None:
        if self.reg_tokens < 0:
            raise ValueError(f"reg_tokens must be >= 0, got {self.reg_tokens}")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def layer_scale(self) -> bool:
        """Whether blocks scale their residual branches (timm: any non-zero init_values)."""
        return bool(self.init_values)

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    def timm_kwargs(self) -> dict:
        """Arguments for `timm.create_model("vit_base_patch16_224", **kwargs)` to rebuild this encoder
        (load it `timm_state_dict`). With registers timm must not give them positions: `no_embed_class`,
        as its `vit_*_reg4_dinov2` models, which then hold no CLS position row (folded into cls_token)."""
        kwargs: dict[str, Any] = {
            "img_size": self.image_size,
            "patch_size": self.patch_size,
            "in_chans": self.in_chans,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "num_classes": 0,
            "global_pool": "token",
        }
        if self.layer_scale:
            kwargs["init_values"] = self.init_values
        if self.reg_tokens:
            kwargs.update(reg_tokens=self.reg_tokens, no_embed_class=True)
        return kwargs

    def to_dict(self) -> dict:
        return asdict(self)


def vit_config(model: str, image_size: int, in_chans: int, patch_size: int | None = None, **overrides) -> ViTConfig:
    """A preset's ViT settings for an image size (patch size: `default_patch_size` unless given).

    >>> encoder = ViT(vit_config("vit-small", image_size=224, in_chans=3))   # ViT-S/16
    >>> tokens = encoder(images)            # B x (1 + 196) x 384, CLS first, final norm applied
    """
    if model not in PRESETS:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(PRESETS)}")
    patch = patch_size or default_patch_size(image_size)
    if image_size % patch:
        raise ValueError(f"patch_size {patch} does not divide the image size {image_size}")
    return ViTConfig(image_size=image_size, patch_size=patch, in_chans=in_chans, **{**PRESETS[model], **overrides})


def transformer_blocks(dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                       init_values: float | None = None) -> nn.Sequential:  # fmt: skip
    """Pre-LN timm blocks (qkv bias, LayerNorm eps 1e-6) with a linear drop-path ramp; with
    `init_values`, timm's layer scale (`ls1`/`ls2`, DINOv2's and CaiT's) on both residual branches."""
    rates = torch.linspace(0, drop_path, depth).tolist() if depth > 1 else [drop_path]
    norm = partial(nn.LayerNorm, eps=1e-6)
    return nn.Sequential(
        *[Block(dim, num_heads, mlp_ratio, qkv_bias=True, init_values=init_values, drop_path=rate, norm_layer=norm)
          for rate in rates]  # fmt: skip
    )


def run_blocks(blocks: nn.Sequential, x: Tensor, checkpointed: bool) -> Tensor:
    """The blocks in order; checkpointed (while gradients are recorded), each block keeps only its input
    and recomputes its activations in the backward: activation memory of one block instead of all, for
    about one more forward of compute. The recompute replays the RNG (drop-path), so gradients match."""
    if not (checkpointed and torch.is_grad_enabled()):
        return blocks(x)
    for block in blocks:
        x = checkpoint(block, x, use_reentrant=False)
    return x


def set_grad_checkpointing(model: nn.Module, enabled: bool = True) -> None:
    """Activation checkpointing on or off in every transformer stack of `model` (encoders, decoders)."""
    for module in model.modules():
        if hasattr(module, "grad_checkpointing"):
            module.grad_checkpointing = enabled


def init_mae_style(module: nn.Module) -> None:
    """MAE init: xavier-uniform Linear weights, zero biases, unit LayerNorm."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ViT(nn.Module):
    """Vision Transformer encoder; `forward(images, ids_keep)` runs only the kept patch tokens.

    >>> mask = random_mask(len(images), encoder.cfg.num_patches, 0.75)
    >>> visible = encoder(images, mask.ids_keep)        # B x (1 + N/4) x D: MAE's encoder pass
    >>> features = pool(encoder(images), "mean_patch")  # B x D: the evaluation features

    Register tokens (cfg.reg_tokens) run through the blocks between CLS and the patches and are left
    out of the output unless `registers=True` (module docstring).
    """

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.image_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        # timm's attribute: None without registers, so the state dict has no entry for them
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.reg_tokens, cfg.embed_dim)) if cfg.reg_tokens else None
        self.register_buffer("pos_embed", sincos_2d(cfg.embed_dim, cfg.grid_size).unsqueeze(0))
        self.blocks = transformer_blocks(cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.drop_path,
                                         cfg.init_values if cfg.layer_scale else None)  # fmt: skip
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.frozen_blocks = 0
        self.grad_checkpointing = False  # set_grad_checkpointing
        init_mae_style(self)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        if self.reg_token is not None:
            nn.init.normal_(self.reg_token, std=1e-6)  # timm's and DINOv2's register init

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches inside the blocks (timm's name): CLS and the registers."""
        return 1 + self.cfg.reg_tokens

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    def forward(self, images: Tensor, ids_keep: Tensor | None = None, final_norm: bool = True,
                registers: bool = False) -> Tensor:  # fmt: skip
        """B x C x H x W -> B x (1 + Nv) x D, CLS first. Position embeddings are added before dropping
        (`ids_keep` selects patches only: CLS and registers always run). `registers=True` returns
        B x (1 + R + Nv) x D, timm's `forward_features` layout."""
        x = self.patch_embed(images) + self.pos_embed[:, 1:]
        if ids_keep is not None:
            x = gather_tokens(x, ids_keep)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        prefix = [cls] if self.reg_token is None else [cls, self.reg_token.expand(x.shape[0], -1, -1)]
        x = run_blocks(self.blocks, torch.cat([*prefix, x], dim=1), self.grad_checkpointing)
        if self.reg_token is not None and not registers:  # before the norm: per token, so less work
            x = torch.cat([x[:, :1], x[:, self.num_prefix_tokens :]], dim=1)
        return self.norm(x) if final_norm else x

    def freeze_lower(self, num_blocks: int) -> None:
        """Freeze patch embedding, CLS and register tokens and the first `num_blocks` blocks; they stay
        in eval mode."""
        self.frozen_blocks = num_blocks
        for module in self._frozen_modules():
            module.requires_grad_(False)
        if num_blocks:
            self.cls_token.requires_grad_(False)
            if self.reg_token is not None:
                self.reg_token.requires_grad_(False)
        self.train(self.training)

    def _frozen_modules(self) -> list[nn.Module]:
        return [self.patch_embed, *self.blocks[: self.frozen_blocks]] if self.frozen_blocks else []

    def train(self, mode: bool = True) -> "ViT":
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self


def pool(tokens: Tensor, kind: Pooling) -> Tensor:
    """Named pooling of encoder tokens ([CLS, patches], what `ViT.forward` returns with or without
    registers): the CLS token or the mean of the patch tokens (timm's "avg" over the patches only)."""
    if kind == "cls":
        return tokens[:, 0]
    if kind == "mean_patch":
        return tokens[:, 1:].mean(dim=1)
    raise ValueError(f"unknown pooling {kind!r}; choose cls or mean_patch")


def timm_state_dict(state: dict[str, Tensor], cfg: ViTConfig) -> dict[str, Tensor]:
    """Our encoder's state dict as the timm model of `cfg.timm_kwargs()` holds it: unchanged without
    registers; with them timm's `no_embed_class` layout (DINOv2 with registers, as timm converts it):
    no CLS row in `pos_embed`, the CLS position added to `cls_token` (the sum our forward computes)."""
    if not cfg.reg_tokens:
        return dict(state)
    table = state["pos_embed"]
    return {**state, "cls_token": state["cls_token"] + table[:, :1], "pos_embed": table[:, 1:]}


def with_cls_position_row(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state dict in timm's `no_embed_class` layout (`pos_embed` of grid^2 rows, the CLS token
    positionless or its position folded into `cls_token`: DeiT III, DINOv2 with registers) in ours:
    a zero CLS row first, which our forward adds to `cls_token` unchanged. Others are returned as is
    (grid^2 and 1 + grid'^2 cannot both be squares)."""
    table = state.get("pos_embed")
    if table is None or table.dim() != 3 or "cls_token" not in state:
        return state
    rows = table.shape[1]
    if math.isqrt(rows) ** 2 != rows:
        return state
    return {**state, "pos_embed": torch.cat([table.new_zeros(1, 1, table.shape[2]), table], dim=1)}
