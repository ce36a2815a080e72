"""The fine-tuned classifier as timm-loadable safetensors: what a user deploys after `--protocol finetune`.

The encoder's keys are already timm's (nn/vit.py) and the head is timm's `head`; the pooling maps to
timm's `global_pool` ("token" for CLS; "avg" with `fc_norm=False` for the patch mean, so timm
normalizes the tokens before averaging, as we do). The timm kwargs, the input size and normalization
and the class names go into the file's metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hybridssl.data.sources import DataInfo
from hybridssl.weights.export import timm_pretrained_cfg
from hybridssl.evaluation.finetune import Classifier
from hybridssl.files import atomic_write_bytes


def timm_classifier_kwargs(classifier: Classifier, info: DataInfo, crop_fraction: float = 1.0) -> dict[str, Any]:
    """Arguments for `timm.create_model("vit_base_patch16_224", **kwargs)` to rebuild the classifier;
    its test view (timm's crop_pct) is the one it was tested with."""
    num_classes = classifier.head.out_features
    pooling = {"global_pool": "token"} if classifier.pooling == "cls" else {"global_pool": "avg", "fc_norm": False}
    overlay = {**timm_pretrained_cfg(classifier.encoder.cfg, info, crop_fraction), "num_classes": num_classes}
    return {**classifier.encoder.cfg.timm_kwargs(), **pooling, "num_classes": num_classes, "pretrained_cfg_overlay": overlay}


def export_classifier(classifier: Classifier, path: Path, info: DataInfo, classes: list[str] | None,
                      crop_fraction: float = 1.0) -> dict[str, Any]:  # fmt: skip
    """Writes the classifier's weights with timm's names (atomically); returns the timm kwargs."""
    from safetensors.torch import save

    kwargs = timm_classifier_kwargs(classifier, info, crop_fraction)
    state = {**classifier.encoder.state_dict(), "head.weight": classifier.head.weight, "head.bias": classifier.head.bias}
    metadata = {
        "timm_kwargs": json.dumps(kwargs),
        "pretrained_cfg": json.dumps(kwargs["pretrained_cfg_overlay"]),
        "hybridssl_pooling": classifier.pooling,
        "classes": json.dumps(classes),
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    atomic_write_bytes(path, save(tensors, metadata=metadata))
    return kwargs
