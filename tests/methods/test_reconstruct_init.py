"""Masked hybrids draw reconstructions like MAE, and `--init-from` restarts their EMA copies from the
loaded encoder."""

import pytest
import torch

from hybridssl.config import resolve
from hybridssl.data.sources import DataInfo
from hybridssl.methods.base import build_method
from hybridssl.report.figures import reconstruction_panels

INFO = DataInfo("fashion-mnist", 28, 1, (0.286,), (0.353,), 10, num_images=4096)


@pytest.mark.parametrize("name", ["mae", "cmae", "can", "macrl"])
def test_masked_methods_reconstruct(name):
    torch.manual_seed(0)
    method = build_method(resolve({"method": name}), INFO)
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    panels = reconstruction_panels(method, images, INFO)
    assert set(panels) == {"original", "masked", "reconstruction", "reconstruction + visible"}
    assert all(p.shape == (3, 1, 28, 28) and 0 <= p.min() and p.max() <= 1 for p in panels.values())
    # visible patches are pasted back unchanged
    shown = panels["reconstruction + visible"] - panels["original"]
    assert (shown.abs().flatten(1).amax(1) > 0).all() and (shown == 0).float().mean() > 0.2


@pytest.mark.parametrize("name,ema", [("cmae", "target_encoder"), ("macrl", "momentum_encoder"), ("mocov3", "momentum_encoder")])
def test_init_from_restarts_ema_copies_from_the_loaded_encoder(name, ema):
    torch.manual_seed(0)
    method = build_method(resolve({"method": name}), INFO)
    with torch.no_grad():
        for p in method.encoder.parameters():
            p.add_(1.0)  # as if loaded from a checkpoint
    loaded = {f"encoder.{k}" for k in method.encoder.state_dict()}
    method.after_init_from(loaded)
    copy = getattr(method, ema).module
    assert all(torch.equal(a, b) for a, b in zip(copy.parameters(), method.encoder.parameters()))
    # when the checkpoint held the EMA copy too, it is kept as loaded
    with torch.no_grad():
        for p in method.encoder.parameters():
            p.add_(1.0)
    method.after_init_from(loaded | {f"{ema}.module.cls_token"})
    assert not torch.equal(copy.cls_token, method.encoder.cls_token)


@pytest.mark.parametrize("name", ["mae", "cmae", "can", "macrl", "simclr", "mocov3", "nnclr", "mae-ct-head", "mae-ct-tune"])
def test_a_method_keeps_the_data_description_its_report_reads(name):
    # run_report draws a checkpoint's reconstructions and embeddings from method.info (size, mean, std)
    assert build_method(resolve({"method": name}), INFO).info == INFO


def test_build_method_sizes_the_encoder_from_the_run_and_names_what_is_wrong():
    from hybridssl.config import ConfigError

    method = build_method(resolve({"method": "mae", "patch_size": 7, "drop_path": 0.1}), INFO)
    assert method.encoder.cfg.patch_size == 7 and method.encoder.cfg.drop_path == 0.1
    with pytest.raises(ConfigError, match="^patch_size: "):
        build_method(resolve({"method": "mae", "patch_size": 5}), INFO)  # 28 px is not whole 5 px patches
    with pytest.raises(ConfigError, match="'mae-ct' is a multi-stage recipe; run it with `pretrain`"):
        build_method(resolve({"method": "mae-ct"}), INFO)
