"""hybridssl: self-supervised ViT pretraining uniting masked image modeling and contrastive learning.

    import hybridssl
    encoder = hybridssl.load_encoder("runs/mae-ct/stage3-tune/checkpoints/last.ckpt")
    vectors = encoder.embed("photos/")            # N x D float32, the method's own pooling

The names below are imported when first used, so `import hybridssl` stays light and loading an
encoder never imports Lightning. docs/api.md describes each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hybridssl.version import __version__

__all__ = [
    "__version__",
    # using an encoder
    "load_encoder", "Encoder", "Embeddings", "save_embeddings", "load_embeddings", "nearest", "near_duplicates",
    "export_encoder",
    # running what the CLI runs
    "build_method", "pretrain", "evaluate",
    # building a method: the contract and the parts
    "METHODS", "Method", "MethodConfig", "Batch", "register", "OwnLoopWarning", "ViT", "vit_config", "pool", "random_mask", "Mask",
    "TokenDecoder", "mlp", "FeatureQueue", "EMA", "param_groups", "layer_decay", "losses", "views",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    """Imports a public name on first use (static imports: nothing is imported by a computed name)."""
    if name in ("load_encoder", "Encoder", "Embeddings"):
        from hybridssl.embedding import encoder as source
    elif name in ("save_embeddings", "load_embeddings"):
        from hybridssl.embedding import store as source
    elif name in ("nearest", "near_duplicates"):
        from hybridssl.embedding import neighbours as source
    elif name == "export_encoder":
        from hybridssl.weights import export as source
    elif name in ("build_method", "pretrain", "evaluate"):
        from hybridssl import api as source
    elif name in ("METHODS", "Method", "MethodConfig", "Batch", "register"):
        from hybridssl.methods import base as source
    elif name == "OwnLoopWarning":
        from hybridssl.methods import own_loop as source
    elif name in ("ViT", "vit_config", "pool"):
        from hybridssl.nn import vit as source
    elif name in ("random_mask", "Mask"):
        from hybridssl.nn import masking as source
    elif name == "TokenDecoder":
        from hybridssl.nn import decoders as source
    elif name == "mlp":
        from hybridssl.nn import heads as source
    elif name == "FeatureQueue":
        from hybridssl.nn import queue as source
    elif name == "EMA":
        from hybridssl.nn import momentum as source
    elif name in ("param_groups", "layer_decay"):
        from hybridssl.nn import param_groups as source
    elif name == "losses":
        import hybridssl.losses as value  # not `from hybridssl import losses`: that asks this function again
    elif name == "views":
        from hybridssl.data import views as value
    else:
        raise AttributeError(f"module 'hybridssl' has no attribute {name!r}")
    if name not in ("losses", "views"):
        value = getattr(source, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and editors; the imports above happen on first use
    from hybridssl import losses
    from hybridssl.api import build_method, evaluate, pretrain
    from hybridssl.data import views
    from hybridssl.embedding.encoder import Embeddings, Encoder, load_encoder
    from hybridssl.embedding.neighbours import near_duplicates, nearest
    from hybridssl.embedding.store import load_embeddings, save_embeddings
    from hybridssl.methods.base import METHODS, Batch, Method, MethodConfig, register
    from hybridssl.methods.own_loop import OwnLoopWarning
    from hybridssl.nn.decoders import TokenDecoder
    from hybridssl.nn.heads import mlp
    from hybridssl.nn.masking import Mask, random_mask
    from hybridssl.nn.momentum import EMA
    from hybridssl.nn.param_groups import layer_decay, param_groups
    from hybridssl.nn.queue import FeatureQueue
    from hybridssl.nn.vit import ViT, pool, vit_config
    from hybridssl.weights.export import export_encoder
