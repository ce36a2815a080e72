"""`hybridssl bench`: time the full training step of a method (views, forward, backward, optimizer,
EMA/queue work) on synthetic uint8 images, after warm-up, outside Lightning."""

from __future__ import annotations

import resource
import time
from typing import Any

import torch

from hybridssl.config import resolve
from hybridssl.data.sources import STATS, DataInfo
from hybridssl.engine.optim import param_groups
from hybridssl.methods.base import Batch, build_method

SIZES = {"fashion-mnist": (28, 1), "cifar10": (32, 3), "cifar100": (32, 3), "stl10": (96, 3)}


def synthetic_info(dataset: str, image_size: int | None, channels: int | None) -> DataInfo:
    size, chans = SIZES.get(dataset, (64, 3))
    size, chans = image_size or size, channels or chans
    mean, std = STATS.get(dataset, ((0.5,) * chans, (0.25,) * chans))
    return DataInfo(dataset, size, chans, mean, std, 10)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(flags: dict[str, Any], steps: int = 10, warmup: int = 3, dataset: str = "fashion-mnist",
          image_size: int | None = None, channels: int | None = None, device: str = "auto") -> dict[str, Any]:  # fmt: skip
    """Images per second of `steps` timed training steps; the config fields of the step are returned too."""
    run = resolve({"dataset": dataset, **flags})
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device)
    info = synthetic_info(dataset, image_size, channels)
    torch.manual_seed(run.seed)
    method = build_method(run, info).to(dev).train()
    opt_cfg = run.optim
    groups = method.param_groups(opt_cfg.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=1e-4, betas=opt_cfg.betas, fused=True if dev.type == "cuda" else None)
    batch = run.batch_size
    images = torch.randint(0, 256, (batch, info.channels, info.image_size, info.image_size), dtype=torch.uint8, device=dev)
    ids = torch.arange(batch, device=dev)
    labels = ids % 10
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)

    def step() -> None:
        with autocast:
            loss = method(Batch(method.views(images), ids, labels))["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.after_step(0.5)

    for _ in range(warmup):
        step()
    sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(dev)
    seconds = time.perf_counter() - start
    enc = method.encoder.cfg
    args = run.method_args
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "images_per_second": batch * steps / seconds,
        "seconds_per_step": seconds / steps,
        "method": run.method,
        "img_size": enc.image_size,
        "patch_size": enc.patch_size,
        "in_chans": enc.in_chans,
        "embed_dim": enc.embed_dim,
        "depth": enc.depth,
        "num_heads": enc.num_heads,
        "decoder_dim": args.get("decoder_dim"),
        "decoder_depth": args.get("decoder_depth"),
        "decoder_heads": args.get("decoder_heads"),
        "mask_ratio": args.get("mask_ratio"),
        "batch_size": batch,
        "steps": steps,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "peak_memory_mb": round(peak / 2**20, 1),
        "model": run.model,
    }
