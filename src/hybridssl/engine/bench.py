"""`hybridssl bench`: time the full training step of a method (views, forward, backward, optimizer,
EMA/queue work) on synthetic uint8 images, after warm-up, outside Lightning; count its FLOPs and
compare the achieved FLOP/s with the device's matmul peak measured in the same run."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from hybridssl.config import resolve
from hybridssl.data.sources import STATS, DataInfo
from hybridssl.engine.optim import adamw
from hybridssl.engine.module import method_batch
from hybridssl.methods.base import build_method

SIZES = {"fashion-mnist": (28, 1), "cifar10": (32, 3), "cifar100": (32, 3), "stl10": (96, 3)}


def synthetic_info(dataset: str, image_size: int | None, channels: int | None) -> DataInfo:
    size, chans = SIZES.get(dataset, (64, 3))
    size, chans = image_size or size, channels or chans
    mean, std = STATS.get(dataset, ((0.5,) * chans, (0.25,) * chans))
    return DataInfo(dataset, size, chans, mean, std, 10, num_images=60_000)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """Best FLOP/s of square matmuls (1024-4096) on `device`: the reference for the achieved rate."""
    best = 0.0
    for n in (1024, 2048, 4096):
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(2):
            a @ b
        sync(device)
        start, count = time.perf_counter(), 0
        while time.perf_counter() - start < seconds / 3:
            a @ b
            count += 1
        sync(device)
        best = max(best, 2 * n**3 * count / (time.perf_counter() - start))
    return best


def training_step(run_config, info: DataInfo, dev: torch.device, compile: bool = False) -> tuple[Callable[[], None], Any]:
    """One full training step on a fixed synthetic batch (views, forward, backward, AdamW, EMA/queue
    work), as a closure; bf16 autocast on CUDA as in training. Shared by `bench` and the profiler script."""
    torch.manual_seed(run_config.seed)
    method = build_method(run_config, info).to(dev).train()
    forward = torch.compile(method.forward) if compile else method.forward
    groups = method.param_groups(run_config.optim.weight_decay)
    for group in groups:  # layer-wise decay as in training (the value does not change a step's cost)
        group["lr"] = 1e-4 * group["lr_scale"]
    optimizer = adamw(groups, 1e-4, run_config.optim.betas)
    batch = run_config.batch_size
    images = torch.randint(0, 256, (batch, info.channels, info.image_size, info.image_size), dtype=torch.uint8, device=dev)
    ids = torch.arange(batch, device=dev)
    labels = ids % 10

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = forward(method_batch(method, {"images": images, "ids": ids, "labels": labels}))["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.after_step(0.5)

    return step, method


def bench(flags: dict[str, Any], steps: int = 10, warmup: int = 3, dataset: str = "fashion-mnist",
          image_size: int | None = None, channels: int | None = None, device: str = "auto",
          compile: bool = False, peak: bool = True) -> dict[str, Any]:  # fmt: skip
    """Images per second of `steps` timed training steps, FLOP/s and the step's configuration."""
    run_config = resolve({"dataset": dataset, **flags})
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    info = synthetic_info(dataset, image_size, channels)
    step, method = training_step(run_config, info, dev, compile)
    batch = run_config.batch_size
    bf16 = dev.type == "cuda"

    for _ in range(warmup):
        step()
    with FlopCounterMode(display=False) as counter:  # forward + backward; attention kernels are not counted
        step()
    sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(dev)
    seconds = (time.perf_counter() - start) / steps
    flops = counter.get_total_flops()
    peak_flops = matmul_peak(dev, torch.bfloat16 if bf16 else torch.float32) if peak else None
    enc = method.encoder.cfg
    args = run_config.method_args
    memory = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "images_per_second": batch / seconds,
        "seconds_per_step": seconds,
        "method": run_config.method,
        "model": run_config.model,
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
        "precision": "bf16-mixed" if bf16 else "fp32",
        "compiled": compile,
        "grad_checkpointing": run_config.grad_checkpointing,
        "flops_per_step": flops,
        "achieved_flops": flops / seconds,
        "matmul_peak_flops": peak_flops,
        "flops_utilization": flops / seconds / peak_flops if peak_flops else None,
        "peak_memory_mb": round(memory / 2**20, 1),
    }
