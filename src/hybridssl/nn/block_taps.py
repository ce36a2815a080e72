"""Intermediate block outputs of a ViT, read by forward hooks during one forward pass.

Methods that put heads on intermediate blocks (MIM-Refiner) read each block's raw output: the residual
stream as the block returns it, before any LayerNorm. The hooks live only for the `with` block, so
nothing stays attached to the encoder (a deep copy, e.g. an EMA of it, carries no hook) and the encoder
code needs no change. Under activation checkpointing the hook sees the same tensor the block returns,
so gradients flow through a tapped output as through the encoder's own.

>>> with block_outputs(encoder.blocks, [16, 22]) as tapped:
...     final = encoder(images)            # B x (1 + N) x D, after the final norm
>>> tapped[16]                             # B x (1 + N) x D, block 16's raw output
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import Tensor, nn


@contextmanager
def block_outputs(blocks: nn.Sequential, indices: Sequence[int]) -> Iterator[dict[int, Tensor]]:
    """A dict filled, during forwards inside the `with`, with the output of `blocks[i]` for each i in
    `indices` (0-based; the last call wins if a block runs twice)."""
    outputs: dict[int, Tensor] = {}

    def keeper(index: int):
        def keep(module: nn.Module, args: tuple, output: Tensor) -> None:
            outputs[index] = output

        return keep

    handles = [blocks[i].register_forward_hook(keeper(i)) for i in indices]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()
