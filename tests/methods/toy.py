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


def build(name: str, info: DataInfo = INFO, seed: int = 0, **args) -> Method:
    torch.manual_seed(seed)
    cls = METHODS[name]
    encoder = ViT(vit_config("vit-pico", info.image_size, info.channels, embed_dim=WIDTH, depth=2, num_heads=2))
    return cls(cls.Config(**{**SMALL, **args}), encoder, info)


def batch(method: Method, size: int = 16, seed: int = 0) -> Batch:
    torch.manual_seed(seed)
    images = torch.randint(0, 256, (size, 1, 28, 28), dtype=torch.uint8)
    return Batch(method.views(images), torch.arange(size), torch.arange(size) % 10)


class Capture:
    """Records a module's inputs and output on each call (forward hook)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls: list[tuple[tuple, object]] = []
        module.register_forward_hook(lambda mod, args, out: self.calls.append((args, out)))
