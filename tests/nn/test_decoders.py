"""The MAE decoder's input: visible tokens back at their patch positions, the mask token at removed
ones, fixed positions added to every token (CLS included), and CAN's condition added to every token."""

import torch

from hybridssl.nn.decoders import TokenDecoder
from hybridssl.nn.masking import random_mask


def test_decoder_input_puts_tokens_at_their_patches_then_adds_positions_and_the_condition():
    torch.manual_seed(0)
    decoder = TokenDecoder(in_dim=8, grid_size=2, dim=16, depth=1, num_heads=2, out_dim=4)
    with torch.no_grad():
        decoder.mask_token.normal_()
    mask = random_mask(3, 4, 0.5)
    tokens, cond = torch.randn(3, 1 + 2, 8), torch.randn(3, 16)
    seen = []
    decoder.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    out = decoder(tokens, mask.ids_restore, cond)
    assert out.shape == (3, 4, 4)
    embedded, pos = decoder.embed(tokens), decoder.pos_embed[0]
    for b in range(3):
        expected = [embedded[b, 0]]  # CLS first
        kept = mask.ids_keep[b].tolist()
        for patch in range(4):
            expected.append(embedded[b, 1 + kept.index(patch)] if patch in kept else decoder.mask_token[0, 0])
        expected = torch.stack(expected) + pos + cond[b]
        assert torch.allclose(seen[0][b], expected, atol=1e-6), b


def test_every_layer_norm_uses_the_official_eps():
    """1e-6 as in the official MAE encoder and decoder (whose released weights we import), not torch's 1e-5."""
    decoder = TokenDecoder(in_dim=8, grid_size=2, dim=16, depth=2, num_heads=2, out_dim=4)
    norms = [m for m in decoder.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 1 and all(m.eps == 1e-6 for m in norms)
