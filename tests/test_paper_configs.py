"""configs/*/imagenet-vit-b16.yaml: each resolves and every stage builds at ViT-B/16 and 224 px with the
published sizes; one training step of each (batch 4, synthetic images) is a slow test (~3 CPU minutes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hybridssl.config import resolve
from hybridssl.data.sources import DataInfo
from hybridssl.engine.stages import stage_config
from hybridssl.methods import METHODS, Batch
from hybridssl.methods.base import build_method
from hybridssl.nn.decoders import TokenDecoder
from hybridssl.shipped_configs import shipped_configs

PAPER_CONFIGS = [path for name, path in shipped_configs().items() if name.endswith("/imagenet-vit-b16")]
MASKED = {"mae", "cmae", "can", "macrl"}
INFO = DataInfo("folder", 224, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1000, num_images=1_281_167)


def built_stages(path: Path):
    run = resolve({"data_dir": "/data/imagenet"}, path)
    assert (run.model, run.image_size, run.patch_size, run.dataset) == ("vit-base", 224, 16, "folder")
    assert run.keep_checkpoints, "an 800-epoch run must not keep every checkpoint"
    for stage in METHODS[run.method].stages(run):
        torch.manual_seed(0)
        method = build_method(stage_config(run, stage, None), INFO)
        assert (method.encoder.cfg.embed_dim, method.encoder.cfg.depth, method.encoder.cfg.num_patches) == (768, 12, 196)
        decoders = [m for m in method.modules() if isinstance(m, TokenDecoder)]
        assert bool(decoders) == (stage.method in MASKED), stage.method
        assert all(d.embed.out_features == 512 for d in decoders)  # the papers' decoder width
        yield method


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.parent.name)
def test_paper_config_builds_every_stage_at_vit_b16(path: Path) -> None:
    assert list(built_stages(path))


@pytest.mark.slow
@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.parent.name)
def test_paper_config_trains_a_step_in_every_stage(path: Path) -> None:
    for method in built_stages(path):
        images = torch.randint(0, 256, (4, 3, 224, 224), dtype=torch.uint8)
        loss = method.train()(Batch(method.views(images), torch.arange(4), torch.arange(4)))["loss"]
        loss.backward()
        assert torch.isfinite(loss)


@pytest.mark.slow
@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.parent.name)
def test_paper_config_runs_through_the_trainer(path: Path, fmnist_dir, tmp_path) -> None:
    """Every key of the config through the CLI and Lightning, with only the model and data shrunk: the
    step above bypasses the Trainer, and warmup_epochs once crashed every one of these before step 1."""
    import yaml

    from hybridssl.cli import main

    queue = "queue_size" in (yaml.safe_load(path.read_text()).get("method_args") or {})
    args = ["pretrain", "--config", str(path), "--model", "vit-pico", "--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir),
            "--image-size", "28", "--set", "patch_size=4", "--batch-size", "16", "--max-steps", "2", "--accelerator", "cpu",
            "--no-progress-bar", "--output", str(tmp_path), *(["--set", "method_args.queue_size=256"] if queue else [])]  # fmt: skip
    assert main(args) == 0
    assert list(tmp_path.rglob("last.ckpt"))


def test_mae_ct_paper_stages_and_queue():
    run = resolve({}, shipped_configs()["mae-ct/imagenet-vit-b16"])
    stages = {s.method: s for s in METHODS["mae-ct"].stages(run)}
    assert (stages["mae"].epochs, stages["mae-ct-head"].epochs, stages["mae-ct-tune"].epochs) == (800, 20, 20)
    tune = build_method(stage_config(run, stages["mae-ct-tune"], None), INFO)
    assert tune.queue.size == 65536 and tune.cfg.topk == 20 and tune.encoder.frozen_blocks == 6
