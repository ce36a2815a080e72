import pytest
import torch

from hybridssl.data.sources import DataInfo
from hybridssl.evaluation.features import encoder_features
from hybridssl.evaluation.finetune import FinetuneSettings, finetune, with_drop_path
from hybridssl.evaluation.linear import ProbeSettings, linear_probe_accuracy
from hybridssl.nn.vit import ViT, ViTConfig
from tests.conftest import toy_images



@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread (and do not suffer from a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


INFO = DataInfo("toy", 16, 1, (0.2,), (0.3,), 4)


def toy(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = toy_images(n, size=16, num_classes=4, seed=seed)
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y).long()


def blind_encoder() -> ViT:
    """A tiny ViT whose zeroed patch embedding sees no image content: its frozen features are the same for
    every image, so no probe can beat chance, but end-to-end training can learn the embedding."""
    torch.manual_seed(0)
    encoder = ViT(ViTConfig(image_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=1, num_heads=2))
    torch.nn.init.zeros_(encoder.patch_embed.proj.weight)
    torch.nn.init.zeros_(encoder.patch_embed.proj.bias)
    return encoder


def test_finetune_improves_over_the_linear_probe_and_leaves_the_encoder_untouched():
    (xtr, ytr), (xte, yte) = toy(128, 0), toy(64, 1)
    encoder = blind_encoder()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    train_f, test_f = (encoder_features(encoder, x, INFO, "mean_patch") for x in (xtr, xte))
    probe = linear_probe_accuracy(train_f, ytr, test_f, yte, ProbeSettings(epochs=20, batch_size=32))
    # crop_scale (1, 1): no crop, the class is the row of a bar (flips keep it)
    settings = FinetuneSettings(epochs=20, batch_size=32, base_lr=3e-2, crop_scale=(1.0, 1.0))
    tuned = finetune(encoder, xtr, ytr, xte, yte, INFO, 4, "mean_patch", settings, seed=0)
    assert probe == 25.0, "identical features for every image: chance"
    assert tuned.test_top1 >= 90.0 and tuned.steps == 20 * (128 // 32)
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in before.items())


def test_drop_path_rebuild_keeps_the_weights():
    encoder = blind_encoder()
    rebuilt = with_drop_path(encoder, 0.1)
    assert rebuilt.cfg.drop_path == 0.1 and encoder.cfg.drop_path == 0.0
    assert all(torch.equal(v, rebuilt.state_dict()[k]) for k, v in encoder.state_dict().items())
    assert rebuilt.blocks[-1].drop_path1.drop_prob == 0.1
