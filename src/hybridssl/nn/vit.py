"""ViT encoder from timm blocks, with token dropping by index, a frozen-prefix option and activation
checkpointing.

Attribute names mirror `timm.models.vision_transformer.VisionTransformer`, so the state dict is
loadable by timm as is (see `engine/checkpoints.py: export_encoder`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from typing import Literal

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from hybridssl.nn.masking import gather_tokens
from hybridssl.nn.pos_embed import sincos_2d

Pooling = Literal["cls", "mean_patch"]

PRESETS: dict[str, dict[str, int]] = {
    "vit-pico": {"embed_dim": 128, "depth": 6, "num_heads": 4},
    "vit-tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "vit-small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "vit-base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    # the released MAE / MAE-CT encoders (ViT-L/16, ViT-H/14), to start from with --init-from
    "vit-large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
    "vit-huge": {"embed_dim": 1280, "depth": 32, "num_heads": 16},
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

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    def timm_kwargs(self) -> dict:
        """Arguments for `timm.create_model("vit_base_patch16_224", **kwargs)` to rebuild this encoder."""
        return {
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

    def to_dict(self) -> dict:
        return asdict(self)


def vit_config(model: str, image_size: int, in_chans: int, patch_size: int | None = None, **overrides) -> ViTConfig:
    if model not in PRESETS:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(PRESETS)}")
    patch = patch_size or default_patch_size(image_size)
    if image_size % patch:
        raise ValueError(f"patch_size {patch} does not divide the image size {image_size}")
    return ViTConfig(image_size=image_size, patch_size=patch, in_chans=in_chans, **{**PRESETS[model], **overrides})


def transformer_blocks(dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
    """Pre-LN timm blocks (qkv bias, LayerNorm eps 1e-6) with a linear drop-path ramp."""
    rates = torch.linspace(0, drop_path, depth).tolist() if depth > 1 else [drop_path]
    norm = partial(nn.LayerNorm, eps=1e-6)
    return nn.Sequential(
        *[Block(dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=rate, norm_layer=norm) for rate in rates]
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
    """Vision Transformer encoder; `forward(images, ids_keep)` runs only the kept patch tokens."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.image_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.register_buffer("pos_embed", sincos_2d(cfg.embed_dim, cfg.grid_size).unsqueeze(0))
        self.blocks = transformer_blocks(cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.drop_path)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.frozen_blocks = 0
        self.grad_checkpointing = False  # set_grad_checkpointing
        init_mae_style(self)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    def forward(self, images: Tensor, ids_keep: Tensor | None = None, final_norm: bool = True) -> Tensor:
        """B x C x H x W -> B x (1 + Nv) x D, CLS first. Position embeddings are added before dropping."""
        x = self.patch_embed(images) + self.pos_embed[:, 1:]
        if ids_keep is not None:
            x = gather_tokens(x, ids_keep)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = run_blocks(self.blocks, torch.cat([cls, x], dim=1), self.grad_checkpointing)
        return self.norm(x) if final_norm else x

    def freeze_lower(self, num_blocks: int) -> None:
        """Freeze patch embedding, CLS token and the first `num_blocks` blocks; they stay in eval mode."""
        self.frozen_blocks = num_blocks
        for module in self._frozen_modules():
            module.requires_grad_(False)
        if num_blocks:
            self.cls_token.requires_grad_(False)
        self.train(self.training)

    def _frozen_modules(self) -> list[nn.Module]:
        return [self.patch_embed, *self.blocks[: self.frozen_blocks]] if self.frozen_blocks else []

    def train(self, mode: bool = True) -> "ViT":
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self


def pool(tokens: Tensor, kind: Pooling) -> Tensor:
    """Named pooling of encoder tokens (CLS first): the CLS token or the mean of the patch tokens."""
    if kind == "cls":
        return tokens[:, 0]
    if kind == "mean_patch":
        return tokens[:, 1:].mean(dim=1)
    raise ValueError(f"unknown pooling {kind!r}; choose cls or mean_patch")
