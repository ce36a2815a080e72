"""Online k-NN monitor: every N epochs, the k-NN top-1 accuracy of the encoder being trained.

The bank is a seeded labelled subset of the training images, the queries the test split where the
dataset has one (else a held-out fifth of the subset). Features come from the encoder in eval mode on
un-augmented images, with the method's evaluation pooling (evaluation/features.py, evaluation/knn.py);
the labels are used here only and never reach a loss. Rank 0 measures and logs `monitor/knn_top1`;
the other ranks go on and wait for it at their next collective. The engine does not know this module:
the CLI hands `monitor_callbacks` to `pretrain`, which calls it for every stage.
"""

from __future__ import annotations

import warnings

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from hybridssl.config import RunConfig
from hybridssl.data.sources import DataInfo, ImageSet, load_dataset
from hybridssl.errors import DataError
from hybridssl.evaluation.features import encoder_features
from hybridssl.evaluation.knn import knn_accuracy
from hybridssl.nn.vit import Pooling, ViT


def labelled(images: ImageSet) -> ImageSet:
    if images.labels is None:
        return ImageSet(images.images[:0], torch.zeros(0, dtype=torch.int64))
    keep = images.labels >= 0
    return ImageSet(images.images[keep], images.labels[keep], images.classes)


class KNNMonitor(Callback):
    def __init__(
        self, every_epochs: int, bank: ImageSet, queries: ImageSet, info: DataInfo, pooling: Pooling, k: int = 20
    ) -> None:
        self.every_epochs, self.bank, self.queries = every_epochs, bank, queries
        self.info, self.pooling, self.k = info, pooling, k
        self.history: list[tuple[int, float]] = []  # (global step, top-1 %)
        self.enabled = len(bank) > 0 and len(queries) > 0
        if not self.enabled:
            warnings.warn("knn_monitor_every_epochs: no labelled images to monitor with; the k-NN monitor is off", stacklevel=3)

    @classmethod
    def for_run(cls, run_config: RunConfig, images: ImageSet, info: DataInfo, pooling: Pooling) -> "KNNMonitor":
        pool = labelled(images).take(run_config.knn_monitor_samples, seed=run_config.seed)
        queries = None
        if run_config.dataset != "folder":  # an image folder is one split
            try:
                size = {"image_size": info.image_size, "channels": info.channels}
                test = load_dataset(run_config.dataset, "test", run_config.data_dir, **size)
                queries = labelled(test).take(run_config.knn_monitor_samples, seed=run_config.seed)
            except DataError:
                pass
        if queries is None or len(queries) == 0:  # no test split: hold out a fifth of the bank
            held_out = len(pool) // 5
            queries = ImageSet(pool.images[:held_out], pool.labels[:held_out])
            pool = ImageSet(pool.images[held_out:], pool.labels[held_out:])
        return cls(run_config.knn_monitor_every_epochs, pool, queries, info, pooling, run_config.knn_monitor_k)

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
        if not self.enabled or (epoch + 1) % self.every_epochs or trainer.global_rank != 0:
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
