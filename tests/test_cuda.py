"""On a CUDA machine (benchmarks/gpu_check.sh runs `pytest -m cuda`): bf16 training from stored and from
streamed images with pinned memory, resume, and evaluation on the GPU. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from hybridssl.cli import main
from hybridssl.engine.checkpoints import load_checkpoint

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("method", ["mae", "simclr", "cmae"])
def test_bf16_steps_on_the_gpu_from_stored_images(method, fmnist_dir, tmp_path):
    args = ["pretrain", "--method", method, "--data-dir", str(fmnist_dir), "--batch-size", "32", "--max-steps", "3",
            "--accelerator", "gpu", "--devices", "1", "--no-progress-bar", "--output", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 3 and ckpt["hybridssl"]["config"]["precision"] in ("auto", "bf16-mixed")
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_streamed_photos_with_pinned_memory_resume_and_evaluate_on_the_gpu(photo_root, tmp_path):
    args = ["pretrain", "--method", "mae", "--dataset", "folder", "--data-dir", str(photo_root), "--image-size", "64",
            "--patch-size", "8", "--batch-size", "16", "--loader", "stream", "--num-workers", "2", "--accelerator", "gpu",
            "--devices", "1", "--no-progress-bar", "--checkpoint-every-steps", "2"]  # fmt: skip
    assert main([*args, "--max-steps", "2", "--output", str(tmp_path)]) == 0
    assert main([*args, "--max-steps", "4", "--output", str(tmp_path), "--resume"]) == 0
    assert load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert main(["evaluate", "--checkpoint", str(tmp_path / "checkpoints" / "last.ckpt"), "--protocol", "knn",
                 "--output", str(tmp_path)]) == 0  # fmt: skip
