"""On a CUDA machine (benchmarks/gpu_check.sh runs `pytest -m cuda`): bf16 training from stored and from
streamed images with pinned memory, resume, and evaluation on the GPU. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from hybridssl.cli import main
from hybridssl.weights.ours import load_checkpoint

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


@pytest.mark.parametrize("streamed", [False, True], ids=["stored", "streamed"])
def test_a_finetune_with_the_papers_regularisers_resumes_on_the_gpu(photo_root, tmp_path, monkeypatch, streamed):
    """bf16 on CUDA: RandAugment (a round trip to the CPU for stored images, in the workers for streamed
    ones), erasing noise from the CUDA generator, mixup / cutmix on the device; killed after epoch 1, the
    resumed run restores the CUDA generator and ends close to the uninterrupted one (bf16 kernels are not
    bit-exact)."""
    from hybridssl.evaluation.finetune import FinetuneSettings, finetune
    from hybridssl.nn.vit import ViT, ViTConfig
    from tests.evaluation.test_finetune import PHOTO_INFO, killed_after_the_first_epoch, streamed_split

    train, test = (streamed_split(photo_root, split, PHOTO_INFO, num_workers=2) for split in ("train", "val"))
    if not streamed:
        train, test = train.materialize(), test.materialize()
    settings = FinetuneSettings(epochs=2, batch_size=16, base_lr=3e-2, drop_path=0.1, rand_augment="rand-m9-mstd0.5-inc1",
                                random_erasing=0.25, mixup=0.8, cutmix=1.0)  # fmt: skip
    torch.manual_seed(0)
    encoder = ViT(ViTConfig(image_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2))
    args = (train, test, PHOTO_INFO, 4, "mean_patch", settings, 0, "cuda")
    whole = finetune(encoder, *args)
    progress = killed_after_the_first_epoch(monkeypatch, encoder, args, tmp_path / "progress.pt")
    assert "cuda_rng" in torch.load(progress.path, weights_only=True)
    resumed = finetune(encoder, *args, progress=progress)
    assert resumed.resumed_after_epoch == 1 and resumed.final_train_loss == pytest.approx(whole.final_train_loss, rel=0.05)
