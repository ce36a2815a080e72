"""torch.hub entry point: `torch.hub.load("<repo or local checkout>", "encoder", checkpoint="file")`
gives the same `Encoder` as `hybridssl.load_encoder("file")` (its `.module` is the ViT, `.embed`
turns images into embeddings with the trained pooling)."""

from __future__ import annotations

import sys
from pathlib import Path

dependencies = ["torch", "timm"]

try:
    import hybridssl
except ImportError:  # a checkout used without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
    import hybridssl


def encoder(checkpoint: str, image_size: int | None = None, device: str | None = None):
    """The encoder of any file hybridssl reads (our checkpoints, exports, official MAE, timm, mmpretrain)."""
    return hybridssl.load_encoder(checkpoint, image_size=image_size, device=device)
