"""A training loop of one's own around a hybridssl method, with what the engine would do for you.

`hybridssl.build_method` gives a registered method as a plain `nn.Module`; this loop trains
MAE-CT's contrastive tuning stage ("mae-ct-tune") from the shipped MAE encoder on a few synthetic
images. The method needs two things a plain loop does not do by itself:

1. layer-wise lr decay: `method.param_groups(wd)` returns groups with an `lr_scale` each (0.65^k for
   the encoder's blocks, 1 for the head); each group's lr must be base_lr * lr_scale, and a schedule
   must scale all groups alike (LambdaLR below multiplies each group's own initial lr);
2. per-step state: `method.after_step(progress)` after every optimizer step moves the EMA target
   projector (MoCo v3, CMAE and MACRL: their momentum encoders).

A loop that forgets either is warned (`OwnLoopWarning`, hybridssl/methods/own_loop.py); this one turns
that warning into an error to show it does neither. Run it with `python examples/own_training_loop.py`
(seconds on a CPU, no downloads).
"""

from __future__ import annotations

import math
import warnings
from importlib.resources import as_file, files

import numpy as np
import torch

import hybridssl
from hybridssl import Batch, OwnLoopWarning

STEPS, BATCH, WARMUP = 12, 16, 2


def synthetic_images(n: int = 128, size: int = 28, seed: int = 0) -> torch.Tensor:
    """uint8 N x 1 x size x size: a bright bar at one of 4 row bands on noise."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, size=(n, 1, size, size), dtype=np.uint8)
    for i in range(n):
        band = (i % 4) * 7
        pixels[i, :, band : band + 5] = 230
    return torch.from_numpy(pixels)


def warmup_cosine(step: int) -> float:
    """lr factor: linear warmup, then half-cosine to 0 (the engine's WarmupCosine)."""
    if step < WARMUP:
        return (step + 1) / WARMUP
    return 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / (STEPS - WARMUP)))


def main() -> None:
    warnings.simplefilter("error", OwnLoopWarning)  # this loop must not trip the guards
    torch.manual_seed(0)
    images = synthetic_images()
    # num_images sizes the queue as a run does (a quarter of the images); narrow heads keep this quick
    method = hybridssl.build_method("mae-ct-tune", model="vit-pico", image_size=28, channels=1, num_images=len(images),
                                    frozen_blocks=1, proj_hidden_dim=256, proj_dim=64, pred_hidden_dim=256)
    with as_file(files("hybridssl") / "pretrained" / "mae-vit-pico-fashion-mnist.ckpt") as path:
        mae = hybridssl.load_encoder(path, device="cpu")
    method.encoder.load_state_dict(mae.module.state_dict())  # start from the MAE, as MAE-CT does
    method.train()

    groups = method.param_groups(weight_decay=0.05)  # frozen patch embedding / block 0 are left out
    base_lr = 1e-3 * BATCH * method.lr_views / 256  # per-256 base lr x the images per step (both views)
    for group in groups:
        group["lr"] = base_lr * group["lr_scale"]
    print("lr scales of the groups:", " ".join(f"{s:.3f}" for s in sorted({g["lr_scale"] for g in groups})))
    optimizer = torch.optim.AdamW(groups, lr=base_lr, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)  # keeps each group's ratio

    target_before = [p.clone() for p in method.target_projector.parameters()]
    generator = torch.Generator().manual_seed(0)
    for step in range(STEPS):
        ids = torch.randperm(len(images), generator=generator)[:BATCH]
        batch = Batch(views=method.views(images[ids]), ids=ids, labels=torch.full((BATCH,), -1))
        losses = method(batch)  # {"loss": ..., and the method's monitored terms}
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        schedule.step()
        method.after_step(progress=(step + 1) / STEPS)  # EMA target projector (and any queue work)
        if step % 2 == 0 or step == STEPS - 1:
            terms = "  ".join(f"{k} {v.item():.3f}" for k, v in losses.items())
            print(f"step {step + 1:2d}  lr {optimizer.param_groups[-1]['lr']:.2e}  {terms}")
        assert torch.isfinite(losses["loss"])
    moved = any(not torch.equal(a, b) for a, b in zip(target_before, method.target_projector.parameters(), strict=True))
    print(f"EMA target projector moved: {moved}")
    assert moved


if __name__ == "__main__":
    main()
