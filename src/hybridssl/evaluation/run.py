"""`evaluate(...)`: one checkpoint (or its random-init twin, or raw pixels), one dataset, one protocol."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from hybridssl.data.sources import DataError, DataInfo, ImageSet, load_dataset
from hybridssl.engine.checkpoints import load_encoder
from hybridssl.evaluation.features import encoder_features, pixel_features
from hybridssl.evaluation.knn import knn_accuracy
from hybridssl.evaluation.linear import ProbeSettings, linear_probe_accuracy
from hybridssl.evaluation.results import append_result
from hybridssl.nn.vit import ViT, Pooling

EncoderKind = Literal["trained", "random-init", "raw-pixels"]


@dataclass
class EvalRequest:
    checkpoint: Path
    dataset: str
    protocol: str
    output: Path
    encoder_kind: EncoderKind = "trained"
    data_dir: Path | None = None
    eval_data_dir: Path | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    epochs: int | None = None
    pooling: Pooling | None = None  # None: the pooling the method was trained for
    ks: tuple[int, ...] = (20,)
    seed: int = 0
    download: bool = False


@dataclass
class Features:
    train: Tensor
    train_labels: Tensor
    test: Tensor
    test_labels: Tensor
    pooling: str


def labelled_splits(req: EvalRequest, info: DataInfo) -> tuple[ImageSet, ImageSet]:
    """Train and test images at the encoder's size; folders: data_dir = train, eval_data_dir = test."""
    opts = {"download": req.download, "image_size": info.image_size, "channels": info.channels}
    if req.dataset == "folder":
        if req.eval_data_dir is None:
            raise DataError("dataset 'folder' needs --eval-data-dir with the labelled test images")
        train = load_dataset("folder", "train", req.data_dir, **opts)
        test = load_dataset("folder", "test", req.eval_data_dir, **opts)
    else:
        train = load_dataset(req.dataset, "train", req.data_dir, **opts)
        test = load_dataset(req.dataset, "test", req.eval_data_dir or req.data_dir, **opts)
    for split, images in (("train", train), ("test", test)):
        if images.labels is None or (images.labels < 0).all():
            raise DataError(f"the {split} split of {req.dataset} has no labels; evaluation needs labelled images")
        shape = tuple(images.images.shape[1:])
        if shape != (info.channels, info.image_size, info.image_size):
            raise DataError(f"{req.dataset} images are {shape}, the encoder expects {(info.channels, info.image_size, info.image_size)}")
    return train.take(req.limit_train, req.seed), test.take(req.limit_test, req.seed)


def encoder_for(req: EvalRequest) -> tuple[ViT, DataInfo, dict[str, Any]]:
    encoder, info, config = load_encoder(req.checkpoint)
    if req.encoder_kind == "random-init":
        torch.manual_seed(req.seed)
        encoder = ViT(encoder.cfg).eval()
    return encoder, info, config


def default_pooling(config: dict[str, Any]) -> Pooling:
    from hybridssl.methods import eval_pooling

    return eval_pooling(config["method"], config.get("method_args"))


def compute_features(req: EvalRequest) -> tuple[Features, dict[str, Any]]:
    encoder, info, config = encoder_for(req)
    train, test = labelled_splits(req, info)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if req.encoder_kind == "raw-pixels":
        pooling = "none"
        train_f, test_f = pixel_features(train.images, info), pixel_features(test.images, info)
    else:
        pooling = req.pooling or default_pooling(config)
        train_f = encoder_features(encoder, train.images, info, pooling, device=device)
        test_f = encoder_features(encoder, test.images, info, pooling, device=device)
    return Features(train_f, train.labels, test_f, test.labels, pooling), config


def evaluate(req: EvalRequest, protocols: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Runs `protocols` (default: req.protocol) on features computed once, and appends one record per
    result to req.output/results.jsonl."""
    protocols = list(protocols or [req.protocol])
    for name in protocols:
        if name not in PROTOCOLS:
            raise ValueError(f"protocol: unknown {name!r}; choose one of {', '.join(PROTOCOLS)}")
    start = time.perf_counter()
    feats, config = compute_features(req)
    feature_seconds = time.perf_counter() - start
    base = {
        "method": config["method"],
        "model": config["model"],
        "checkpoint": str(req.checkpoint),
        "encoder": req.encoder_kind,
        "dataset": req.dataset,
        "train_size": len(feats.train),
        "test_size": len(feats.test),
        "pooling": feats.pooling,
        "seed": req.seed,
    }
    records = []
    for name in protocols:
        begin = time.perf_counter()
        for result in PROTOCOLS[name](feats, req):
            timing = {"feature_seconds": round(feature_seconds, 2), "wall_seconds": round(time.perf_counter() - begin, 2)}
            records.append(append_result(req.output, {**base, "protocol": name, **result, **timing}))
    return records


def run_knn(feats: Features, req: EvalRequest) -> list[dict[str, Any]]:
    temperature = 0.07
    accs = knn_accuracy(feats.train, feats.train_labels, feats.test, feats.test_labels, req.ks, temperature)
    return [{"settings": {"k": k, "temperature": temperature, "similarity": "cosine"}, "metric": "top1", "value": acc} for k, acc in accs.items()]


def run_linear(feats: Features, req: EvalRequest) -> list[dict[str, Any]]:
    settings = ProbeSettings(epochs=req.epochs or ProbeSettings.epochs)
    acc = linear_probe_accuracy(feats.train, feats.train_labels, feats.test, feats.test_labels, settings, req.seed)
    return [{"settings": {**settings.to_dict(), "head": "batchnorm(affine=False)+linear", "optimizer": "sgd"}, "metric": "top1", "value": acc}]


PROTOCOLS = {"knn": run_knn, "linear": run_linear}
