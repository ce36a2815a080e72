"""Token decoders: MAE's pixel decoder, and the same design as CMAE's feature decoder or CAN's
noise-conditioned decoder (docs/methods.md 7.2, item 3)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hybridssl.nn.masking import gather_tokens
from hybridssl.nn.pos_embed import sincos_2d
from hybridssl.nn.vit import ViTConfig, init_mae_style, run_blocks, transformer_blocks


class TokenDecoder(nn.Module):
    """Encoder tokens (CLS + visible) -> one output vector per patch, in original patch order.

    Removed positions get a shared learned mask token; fixed sin-cos positions are added after the
    un-shuffle. `cond` (B x dim), when given, is added to every token (CAN's noise-level embedding).
    """

    def __init__(
        self, in_dim: int, grid_size: int, dim: int, depth: int, num_heads: int, out_dim: int, mlp_ratio: float = 4.0
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_2d(dim, grid_size).unsqueeze(0))
        self.blocks = transformer_blocks(dim, depth, num_heads, mlp_ratio)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, out_dim)
        self.grad_checkpointing = False  # nn.vit.set_grad_checkpointing
        init_mae_style(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, tokens: Tensor, ids_restore: Tensor, cond: Tensor | None = None) -> Tensor:
        """tokens B x (1 + Nv) x in_dim, ids_restore B x N -> B x N x out_dim."""
        x = self.embed(tokens)
        batch, num_visible = x.shape[0], x.shape[1] - 1
        fill = self.mask_token.expand(batch, ids_restore.shape[1] - num_visible, -1)
        patches = gather_tokens(torch.cat([x[:, 1:], fill.to(x.dtype)], dim=1), ids_restore)
        x = torch.cat([x[:, :1], patches], dim=1) + self.pos_embed
        if cond is not None:
            x = x + cond.unsqueeze(1)
        return self.head(self.norm(run_blocks(self.blocks, x, self.grad_checkpointing))[:, 1:])


def pixel_decoder(encoder: ViTConfig, dim: int, depth: int, num_heads: int) -> TokenDecoder:
    """MAE's decoder for `encoder`: predicts the p*p*C pixel values of every patch."""
    return TokenDecoder(encoder.embed_dim, encoder.grid_size, dim, depth, num_heads, encoder.patch_size**2 * encoder.in_chans)
