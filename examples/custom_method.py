"""A new pretraining method defined outside the package, trained by the engine and embedded.

What it shows:
- a method is an `nn.Module` subclass of `hybridssl.Method` with a `MethodConfig` (its settings,
  checked like `--set method_args.KEY=...`), registered under a name with `@hybridssl.register`;
- the contract the engine relies on: `self.views` (the augmented views of a uint8 batch),
  `forward(batch)` -> named losses with the total under "loss", `after_step(progress)` for the EMA
  target after each optimizer step, `momentum_pairs()` so `--init-from` restarts the EMA copy;
- `hybridssl.pretrain(method=<the name>, ...)` trains it like a built-in method (checkpoints, logs,
  schedule), and `hybridssl.load_encoder(checkpoint).embed(folder)` turns images into vectors with
  the method's own pooling (`eval_pooling`).

The method ("masked-siamese"): the online encoder sees one crop with most of its patches masked
(`mask_ratio`) and predicts, through a projector and a predictor, the EMA target's embedding of the
other, unmasked crop (BYOL's loss, with masking as the extra augmentation). It is small on purpose;
run it with `python examples/custom_method.py` (seconds on a CPU, no downloads). docs/adding-a-method.md
says what a built-in method adds to this.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import Field, PositiveInt
from torch import Tensor, nn

import hybridssl
from hybridssl import EMA, Batch, Method, MethodConfig, mlp, pool, random_mask


class MaskedSiameseConfig(MethodConfig):
    """method_args of the method: unknown keys and out-of-range values are errors naming the field."""

    mask_ratio: float = Field(0.6, ge=0, lt=1)
    momentum: float = Field(0.99, ge=0, le=1)
    proj_dim: PositiveInt = 64


@hybridssl.register
class MaskedSiamese(Method):
    name = "masked-siamese"
    Config = MaskedSiameseConfig
    # the optimizer recipe when a run config does not set one (MAE's AdamW settings)
    run_defaults = {"optim": {"base_lr": 1.5e-4, "weight_decay": 0.05, "betas": (0.9, 0.95), "warmup_fraction": 0.1}}
    lr_views = 1  # the lr scales with images per step, not views per step
    eval_pooling = "cls"  # the pooling load_encoder and `hybridssl evaluate` use for this method

    def __init__(self, cfg: MaskedSiameseConfig, encoder: hybridssl.ViT, info) -> None:
        super().__init__(cfg, encoder, info)
        self.views = hybridssl.views.crop_flip(info, num_views=2, scale=(0.3, 1.0))
        dim = encoder.embed_dim
        self.projector = mlp(dim, 2 * dim, cfg.proj_dim)
        self.predictor = mlp(cfg.proj_dim, 2 * dim, cfg.proj_dim)
        # the target branch: EMA copies, frozen, in the state dict (a resume restores them)
        self.target_encoder = EMA(encoder)
        self.target_projector = EMA(self.projector)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        online_view, target_view = batch.views
        mask = random_mask(len(online_view), self.encoder.cfg.num_patches, self.cfg.mask_ratio, online_view.device)
        online = self.predictor(self.projector(pool(self.encoder(online_view, mask.ids_keep), "cls")))
        with torch.no_grad():
            target = self.target_projector(pool(self.target_encoder(target_view), "cls"))
        loss = 2 - 2 * F.cosine_similarity(online, target, dim=-1).mean()
        return {"loss": loss, "target_std": F.normalize(target, dim=-1).std(0).mean()}  # a monitored extra

    def momentum_pairs(self) -> list[tuple[EMA, nn.Module]]:
        return [(self.target_encoder, self.encoder), (self.target_projector, self.projector)]

    def after_step(self, progress: float) -> None:
        self.update_momentum(self.cfg.momentum)


def write_images(folder: Path, n: int = 96, size: int = 32, seed: int = 0) -> Path:
    """Greyscale PNGs in 4 class folders: a bright bar at a class-specific row band on noise."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        label = i % 4
        pixels = rng.integers(0, 60, size=(size, size), dtype=np.uint8)
        pixels[label * 8 : label * 8 + 6] = 230
        (folder / f"class{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"class{label}" / f"{i:03d}.png")
    return folder


def main() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        images = write_images(Path(tmp) / "images")
        checkpoint = hybridssl.pretrain(
            method="masked-siamese", dataset="folder", data_dir=images, channels=1, image_size=28,
            model="vit-pico", batch_size=32, max_steps=6, method_args={"mask_ratio": 0.75},
            output=Path(tmp) / "run", accelerator="cpu", progress_bar=False, log_every_n_steps=1,
        )  # fmt: skip
        print(f"trained: {checkpoint.relative_to(tmp)}")
        encoder = hybridssl.load_encoder(checkpoint, device="cpu")
        vectors = encoder.embed(images, num_workers=0)  # decoded in this process: a few images need no workers
        print(f"embedded {len(vectors)} images -> {vectors.shape[1]}-d vectors ({encoder.method}, pooling {encoder.pooling})")
        assert vectors.shape == (96, encoder.dim) and np.isfinite(vectors).all()


if __name__ == "__main__":
    main()
