"""The fine-tuned classifier loads into timm and gives the same logits."""

import json

import pytest
import torch

from hybridssl.data.sources import DataInfo
from hybridssl.evaluation.classifier_export import export_classifier
from hybridssl.evaluation.finetune import Classifier
from hybridssl.nn.vit import ViT, ViTConfig


def timm_from(path):
    import timm
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    kwargs = json.loads(metadata["timm_kwargs"])
    return timm.create_model("vit_base_patch16_224", pretrained=False, checkpoint_path=str(path), **kwargs).eval(), metadata


@pytest.mark.parametrize("pooling, channels", [("cls", 1), ("mean_patch", 3)])
def test_timm_rebuilds_the_classifier_with_the_same_logits(tmp_path, pooling, channels):
    torch.manual_seed(0)
    encoder = ViT(ViTConfig(image_size=16, patch_size=4, in_chans=channels, embed_dim=32, depth=2, num_heads=2))
    classifier = Classifier(encoder, 5, pooling).eval()
    torch.nn.init.normal_(classifier.head.weight)  # not the near-zero init: the head must matter
    info = DataInfo("toy", 16, channels, (0.3,) * channels, (0.2,) * channels, 5)
    path = tmp_path / "finetuned" / "c.safetensors"
    export_classifier(classifier, path, info, [f"class {i}" for i in range(5)])
    model, metadata = timm_from(path)
    x = torch.randn(4, channels, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model(x), classifier(x), atol=1e-5)
    assert json.loads(metadata["classes"]) == [f"class {i}" for i in range(5)]
    assert model.pretrained_cfg["mean"] == [0.3] * channels and model.pretrained_cfg["num_classes"] == 5
