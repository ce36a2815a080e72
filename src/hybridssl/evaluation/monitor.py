"""Online k-NN monitor: every N epochs, the k-NN top-1 accuracy of the encoder being trained.

The bank is a seeded labelled subset of the training images, the queries the test split where the
dataset has one (else a held-out fifth of the subset). Features come from the encoder in eval mode on
un-augmented images, with the method's evaluation pooling (evaluation/features.py, evaluation/knn.py);
the labels are used here only and never reach a loss. Rank 0 alone samples the images (at setup:
on a streamed folder that means decoding them), measures and logs `monitor/knn_top1`; the other ranks
hold no bank, go on and wait for it at their next collective. The engine does not know this module:
the CLI hands `monitor_callbacks` to `pretrain`, which calls it for every stage.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import replace
from functools import partial

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from hybridssl.config import RunConfig
from hybridssl.data.sources import DataInfo, ImageSet
from hybridssl.data.streaming import StreamingSet
from hybridssl.data.training_set import TrainingData
from hybridssl.evaluation.data import EvalData, eval_split, with_classes_of
from hybridssl.errors import DataError
from hybridssl.embedding.features import encoder_features
from hybridssl.evaluation.knn import knn_accuracy
from hybridssl.nn.vit import Pooling, ViT


def labelled(images: ImageSet) -> ImageSet:
    if images.labels is None:
        return ImageSet(images.images[:0], torch.zeros(0, dtype=torch.int64))
    keep = images.labels >= 0
    return ImageSet(images.images[keep], images.labels[keep], images.classes)


def labelled_sample(data: TrainingData | EvalData, limit: int, seed: int) -> ImageSet:
    """Up to `limit` labelled images in memory (a streamed set decodes only those)."""
    if isinstance(data, StreamingSet):
        keep = np.flatnonzero(data.index.labels >= 0)
        if len(keep) == 0:
            return labelled(ImageSet(torch.zeros(0, data.channels, data.image_size, data.image_size, dtype=torch.uint8), None))
        return labelled(replace(data, index=data.index.select(keep)).materialize(limit, seed))
    return labelled(data).take(limit, seed=seed)


def monitor_sets(run_config: RunConfig, images: ImageSet, info: DataInfo) -> tuple[ImageSet, ImageSet]:
    """The bank (labelled training images) and the queries (the test split, else a fifth of the bank)."""
    limit, seed = run_config.knn_monitor_samples, run_config.seed
    bank = labelled_sample(images, limit, seed)
    queries = None
    try:  # the evaluation's test split (a folder: its val/ when it has one)
        test = eval_split(run_config.dataset, "test", run_config.data_dir, None, info, limit=limit, seed=seed,
                          loader=run_config.loader, num_workers=run_config.num_workers)  # fmt: skip
        queries = labelled_sample(with_classes_of(images, test), limit, seed)
    except DataError:
        pass
    if queries is None or len(queries) == 0:  # no test split: hold out a fifth of the bank
        held_out = len(bank) // 5
        queries = ImageSet(bank.images[:held_out], bank.labels[:held_out])
        bank = ImageSet(bank.images[held_out:], bank.labels[held_out:])
    return bank, queries


class KNNMonitor(Callback):
    def __init__(
        self, every_epochs: int, sets: Callable[[], tuple[ImageSet, ImageSet]], info: DataInfo, pooling: Pooling, k: int = 20
    ) -> None:
        self.every_epochs, self.sets, self.info, self.pooling, self.k = every_epochs, sets, info, pooling, k
        self.bank: ImageSet | None = None
        self.queries: ImageSet | None = None
        self.history: list[tuple[int, float]] = []  # (global step, top-1 %)

    @classmethod
    def for_run(cls, run_config: RunConfig, images: ImageSet, info: DataInfo, pooling: Pooling) -> "KNNMonitor":
        sets = partial(monitor_sets, run_config, images, info)
        return cls(run_config.knn_monitor_every_epochs, sets, info, pooling, run_config.knn_monitor_k)

    @property
    def enabled(self) -> bool:
        return self.bank is not None and self.queries is not None and len(self.bank) > 0 and len(self.queries) > 0

    def take_sets(self) -> None:
        if self.bank is not None:
            return
        try:
            self.bank, self.queries = self.sets()
        except Exception as exc:  # noqa: BLE001 - only rank 0 samples: raising here would leave the other ranks at a barrier
            warnings.warn(f"knn_monitor_every_epochs: sampling the monitor's images failed ({exc}); the k-NN monitor is off", stacklevel=2)
            self.bank = self.queries = ImageSet(torch.zeros(0, 1, 1, 1, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64))
            return
        if not self.enabled:
            warnings.warn("knn_monitor_every_epochs: no labelled images to monitor with; the k-NN monitor is off", stacklevel=2)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.global_rank == 0:  # the only rank that measures
            self.take_sets()

    @torch.no_grad()
    def measure(self, encoder: ViT, device: torch.device) -> float:
        was_training = encoder.training
        try:
            bank = encoder_features(encoder, self.bank.images, self.info, self.pooling, device=device)
            queries = encoder_features(encoder, self.queries.images, self.info, self.pooling, device=device)
        finally:
            encoder.train(was_training)
        return knn_accuracy(bank, self.bank.labels, queries, self.queries.labels, (self.k,))[self.k]

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the loader's epoch: Lightning's counter drifts across repeated resumes (engine/train.py)
        epoch = getattr(trainer.train_dataloader, "epoch", trainer.current_epoch)
        # a run stopped in the middle of an epoch (SLURM's warning signal) has not ended one
        loader = trainer.train_dataloader
        stopped_mid_epoch = trainer.should_stop and getattr(loader, "consumed", 0) < len(loader)
        if not self.enabled or (epoch + 1) % self.every_epochs or trainer.global_rank != 0 or stopped_mid_epoch:
            return
        top1 = self.measure(pl_module.method.encoder, pl_module.device)
        self.history.append((trainer.global_step, top1))
        for logger in trainer.loggers:
            logger.log_metrics({"monitor/knn_top1": top1}, step=trainer.global_step)


def monitor_callbacks(run_config: RunConfig, images: ImageSet, info: DataInfo, pooling: Pooling) -> list[Callback]:
    """The evaluation callbacks a run asked for (engine/train.CallbackFactory)."""
    if not run_config.knn_monitor_every_epochs:
        return []
    return [KNNMonitor.for_run(run_config, images, info, pooling)]
