"""Small builders shared by the method tests: a toy data description, a method around a micro ViT, a batch."""

from __future__ import annotations

import torch
from torch import nn

from hybridssl.config import validate_method_args
from hybridssl.data.sources import DataInfo
from hybridssl.methods import METHODS, Batch, Method
from hybridssl.nn.vit import ViT, ViTConfig

INFO = DataInfo("toy", 28, 1, (0.5,), (0.25,), num_classes=10, num_images=512)
DIM, DEPTH = 32, 4  # a micro ViT (patch 4, 49 tokens): the mechanics of a vit-pico at a tenth of the cost


def build(name: str, info: DataInfo = INFO, seed: int = 0, **args) -> Method:
    torch.manual_seed(seed)
    cls = METHODS[name]
    encoder = ViT(ViTConfig(info.image_size, 4, info.channels, embed_dim=DIM, depth=DEPTH, num_heads=2))
    return cls(cls.Config.model_validate(validate_method_args(name, args)), encoder, info)


def batch(method: Method, size: int = 16, seed: int = 1, labels: bool = True) -> Batch:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (size, 1, 28, 28), dtype=torch.uint8, generator=g)
    torch.manual_seed(seed)
    ids = torch.arange(size) * 3 + seed
    y = torch.arange(size) % 10 if labels else torch.full((size,), -1)
    return Batch(method.views(images), ids, y)


def optimizer(method: Method, lr: float = 1e-3, weight_decay: float = 0.05) -> torch.optim.Optimizer:
    """AdamW over the method's own groups, as the engine builds it (lr x each group's scale)."""
    groups = method.param_groups(weight_decay)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    return torch.optim.AdamW(groups, lr=lr)


def train_step(method: Method, b: Batch, opt: torch.optim.Optimizer, progress: float = 0.5) -> dict[str, torch.Tensor]:
    method.train()
    losses = method(b)
    opt.zero_grad()
    losses["loss"].backward()
    opt.step()
    method.after_step(progress)
    return losses


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
