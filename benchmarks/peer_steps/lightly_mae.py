"""The peer's MAE training step, built from lightly's public MAE modules (runs in the peer venv only).

Usage: python lightly_mae.py '<json config from `hybridssl bench --json`>' -> one JSON line.
Same encoder, decoder, batch, mask ratio and optimizer (AdamW) as ours; random float images.
"""

import json
import sys
import time

import torch
from lightly.models import utils
from lightly.models.modules import MaskedVisionTransformerTIMM
from lightly.models.modules.masked_autoencoder_timm import MAEDecoderTIMM
from timm.models.vision_transformer import VisionTransformer


def main() -> None:
    cfg = json.loads(sys.argv[1])
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=cfg["img_size"], patch_size=cfg["patch_size"], in_chans=cfg["in_chans"],
                            embed_dim=cfg["embed_dim"], depth=cfg["depth"], num_heads=cfg["num_heads"], num_classes=0)  # fmt: skip
    encoder = MaskedVisionTransformerTIMM(vit=vit)
    decoder = MAEDecoderTIMM(
        num_patches=vit.patch_embed.num_patches, patch_size=cfg["patch_size"], in_chans=cfg["in_chans"],
        embed_dim=cfg["embed_dim"], decoder_embed_dim=cfg["decoder_dim"], decoder_depth=cfg["decoder_depth"],
        decoder_num_heads=cfg["decoder_heads"], mlp_ratio=4.0, proj_drop_rate=0.0, attn_drop_rate=0.0,
    )  # fmt: skip
    params = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)
    batch, patch = cfg["batch_size"], cfg["patch_size"]
    images = torch.randn(batch, cfg["in_chans"], cfg["img_size"], cfg["img_size"])
    tokens = encoder.sequence_length

    def step() -> None:
        keep, masked = utils.random_token_mask(size=(batch, tokens), mask_ratio=cfg["mask_ratio"], device=images.device)
        latent = decoder.embed(encoder.encode(images=images, idx_keep=keep))
        filled = utils.set_at_index(utils.repeat_token(decoder.mask_token, (batch, tokens)), keep, latent.type_as(latent))
        prediction = decoder.predict(utils.get_at_index(decoder.decode(filled), masked))
        target = utils.get_at_index(utils.patchify(images, patch), masked - 1)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        loss = (prediction - target).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    steps = int(cfg.get("steps", 10))
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    print(json.dumps({"peer": "lightly", "images_per_second": batch / seconds, "seconds_per_step": seconds}))


if __name__ == "__main__":
    main()
