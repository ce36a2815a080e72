"""Small builders for method tests: a 2-block, 32-wide ViT on 28 px greyscale (patch 4, a 7x7 grid) with
narrow decoders and heads, so the mechanics tests stay fast; the CLI tests run the real defaults."""

from __future__ import annotations

import torch

from hybridssl.data.sources import DataInfo
from hybridssl.methods import METHODS, Batch, Method
from hybridssl.nn.vit import ViT, vit_config

INFO = DataInfo("toy", 28, 1, (0.5,), (0.25,), 10, 512)


WIDTH = 32
SMALL = {"decoder_dim": 32, "decoder_heads": 2, "proj_hidden_dim": 64}


def build(name: str, info: DataInfo = INFO, seed: int = 0, depth: int = 2, **args) -> Method:
    torch.manual_seed(seed)
    cls = METHODS[name]
    encoder = ViT(vit_config("vit-pico", info.image_size, info.channels, embed_dim=WIDTH, depth=depth, num_heads=2))
    small = {k: v for k, v in SMALL.items() if k in cls.Config.model_fields}
    return cls(cls.Config(**{**small, **args}), encoder, info)


def batch(method: Method, size: int = 16, seed: int = 0, labels: bool = True) -> Batch:
    torch.manual_seed(seed)
    images = torch.randint(0, 256, (size, 1, 28, 28), dtype=torch.uint8)
    return Batch(method.views(images), torch.arange(size), torch.arange(size) % 10 if labels else torch.full((size,), -1))


def optimizer(method: Method, lr: float = 1e-3, weight_decay: float = 0.05) -> torch.optim.Optimizer:
    """AdamW over the method's own parameter groups, each at lr x its scale, as the engine builds it."""
    groups = method.param_groups(weight_decay)
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    return torch.optim.AdamW(groups, lr=lr)


def train_step(method: Method, b: Batch, opt: torch.optim.Optimizer, progress: float = 0.5) -> dict[str, torch.Tensor]:
    """One engine step: forward in train mode, backward of "loss", optimizer step, after_step."""
    method.train()
    losses = method(b)
    opt.zero_grad()
    losses["loss"].backward()
    opt.step()
    method.after_step(progress)
    return losses


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class Capture:
    """Records a module's inputs and output on each call (forward hook)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls: list[tuple[tuple, object]] = []
        module.register_forward_hook(lambda mod, args, out: self.calls.append((args, out)))


def build_at_vit_b_width(name: str) -> Method:
    """The method on a one-block ViT as wide as ViT-B (768), where head widths take the paper's values."""
    cls = METHODS[name]
    encoder = ViT(vit_config("vit-pico", INFO.image_size, INFO.channels, embed_dim=768, depth=1, num_heads=12))
    return cls(cls.Config(), encoder, INFO)


def views_at_colour_strengths(name: str, strengths: tuple[float, ...], seed: int = 3) -> list[list[torch.Tensor]]:
    """The method's views of one batch, built at each colour strength and drawn with the same seed."""
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    views = []
    for strength in strengths:
        method = build(name, color_strength=strength)
        torch.manual_seed(seed)
        views.append(method.views(images))
    return views
