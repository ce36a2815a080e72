"""Figures drawn with matplotlib (Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from hybridssl.data.sources import DataInfo  # noqa: E402
from hybridssl.data.views import identity, to_unit  # noqa: E402
from hybridssl.nn.patches import patchify, unpatchify  # noqa: E402


@torch.inference_mode()
def reconstruction_panels(method, images: Tensor, info: DataInfo) -> dict[str, Tensor]:
    """Original, masked input, reconstruction and reconstruction with the visible patches pasted back,
    all in [0, 1] image space. `method` must have `reconstruct(images) -> (pred, Mask)` and `cfg.norm_pix`;
    the norm-pix prediction is mapped back with each patch's true mean and variance (as MAE's demo does)."""
    method.eval()
    x = identity(info).normalize(to_unit(images))
    pred, mask = method.reconstruct(x)
    cfg = method.encoder.cfg
    patches = patchify(x, cfg.patch_size)
    if getattr(method.cfg, "norm_pix", False):
        mean, var = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True)
        pred = pred * (var + 1e-6).sqrt() + mean
    removed = mask.mask.unsqueeze(-1)
    def to_image(p: Tensor) -> Tensor:
        img = unpatchify(p, cfg.patch_size, cfg.in_chans, cfg.image_size)
        mean = torch.tensor(info.mean).view(1, -1, 1, 1)
        std = torch.tensor(info.std).view(1, -1, 1, 1)
        return (img * std + mean).clamp(0, 1)
    grey = torch.full_like(patches, 0.0)
    return {
        "original": to_image(patches),
        "masked": to_image(patches * (1 - removed) + grey * removed),
        "reconstruction": to_image(pred),
        "reconstruction + visible": to_image(patches * (1 - removed) + pred * removed),
    }


def reconstruction_grid(method, images: Tensor, info: DataInfo, path: str | Path, seed: int = 0) -> Path:
    """One row per image, one column per panel of `reconstruction_panels`; saved as PNG."""
    torch.manual_seed(seed)
    panels = reconstruction_panels(method, images, info)
    rows, cols = len(images), len(panels)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows), squeeze=False)
    for c, (title, batch) in enumerate(panels.items()):
        for r in range(rows):
            ax = axes[r][c]
            img = batch[r].permute(1, 2, 0).numpy()
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
