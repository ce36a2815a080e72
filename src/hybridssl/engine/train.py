"""`pretrain(run)`: data -> method -> Lightning Trainer -> checkpoints, logs and the saved config."""

from __future__ import annotations

import inspect
import logging
import os
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy
from torch.nn.parallel import DistributedDataParallel

from hybridssl.config import RunConfig, save_yaml
from hybridssl.data.loader import InMemoryLoader
from hybridssl.data.sources import PRETRAIN_SPLIT, DataError, ImageSet, data_info, load_dataset
from hybridssl.engine.callbacks import DataPosition, FinalCheckpoint, ProgressBar, Throughput
from hybridssl.engine.checkpoints import AtomicCheckpointIO, CheckpointError, load_checkpoint
from hybridssl.engine.module import PretrainModule, seed_step
from hybridssl.engine.monitor import KNNMonitor
from hybridssl.methods.base import METHODS, Method, build_method, eval_pooling, is_recipe

LAST = "last.ckpt"


class PretrainData(L.LightningDataModule):
    """Hands each rank its loader once the rank is known (after the processes are launched)."""

    def __init__(self, images: ImageSet, batch_size: int, seed: int) -> None:
        super().__init__()
        self.images, self.batch_size, self.seed = images, batch_size, seed

    def train_dataloader(self) -> InMemoryLoader:
        t = self.trainer
        return InMemoryLoader(self.images.images, self.images.labels, self.batch_size, self.seed, t.global_rank, t.world_size)


def load_training_images(run: RunConfig) -> ImageSet:
    split = PRETRAIN_SPLIT.get(run.dataset, "train")
    images = load_dataset(
        run.dataset, split, run.data_dir, download=run.download,
        image_size=run.image_size, channels=run.channels, strict=run.strict_data,
    )  # fmt: skip
    images = images.take(run.limit_train, seed=run.seed)
    if len(images) < run.batch_size * run.num_nodes * (run.devices if isinstance(run.devices, int) else 1):
        raise DataError(
            f"batch_size: the {run.dataset} training set has {len(images)} images, fewer than one global batch "
            f"({run.batch_size} per device); lower --batch-size"
        )
    return images


def checkpoint_dir(run: RunConfig) -> Path:
    return Path(run.output) / "checkpoints"


def init_from_checkpoint(method: Method, path: Path) -> set[str]:
    """Starts from another run's weights: the whole encoder, plus every other state-dict entry (heads,
    queues) whose name and shape match; returns the names copied. Chains encoder-only (MAE -> head)
    and encoder + head (head -> tuning) stages alike."""
    state = {k.removeprefix("method."): v for k, v in load_checkpoint(path)["state_dict"].items()}
    own = method.state_dict()
    for key in (k for k in own if k.startswith("encoder.")):
        if key not in state or state[key].shape != own[key].shape:
            found = "missing" if key not in state else f"{tuple(state[key].shape)}, not {tuple(own[key].shape)}"
            raise CheckpointError(f"init_from: {path} holds no encoder that fits this model ({key}: {found})")
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    method.load_state_dict(matched, strict=False)
    method.after_init_from(set(matched))
    return set(matched)


def ddp_buffer_sync(method_cls: type[Method]) -> dict[str, bool]:
    """DDP options that skip the per-forward copy of rank 0's buffers where the method allows it."""
    if method_cls.broadcast_buffers:
        return {}
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def build_trainer(run: RunConfig, method_cls: type[Method], extra_callbacks: list[L.Callback] = ()) -> L.Trainer:
    out = Path(run.output)
    multi = run.devices == "auto" or run.devices > 1 or run.num_nodes > 1
    strategy = DDPStrategy(find_unused_parameters=method_cls.find_unused_parameters, **ddp_buffer_sync(method_cls)) if multi else "auto"
    on_cuda = run.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    precision = run.precision
    if precision == "auto":
        precision = "bf16-mixed" if on_cuda else "32-true"
    every_steps = run.checkpoint_every_steps
    periodic = ModelCheckpoint(
        dirpath=checkpoint_dir(run),
        filename="step{step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=every_steps,
        every_n_epochs=None if every_steps else run.checkpoint_every_epochs,
        save_top_k=-1,
        save_last=True,
    )
    return L.Trainer(
        accelerator=run.accelerator,
        devices=run.devices,
        num_nodes=run.num_nodes,
        strategy=strategy,
        precision=precision,
        plugins=[AtomicCheckpointIO()],
        max_epochs=run.epochs if run.epochs is not None else -1,
        max_steps=run.max_steps or -1,
        accumulate_grad_batches=run.accumulate_grad_batches,
        gradient_clip_val=run.optim.grad_clip,
        sync_batchnorm=multi and on_cuda,  # SyncBatchNorm needs CUDA; CPU ranks keep their own BN statistics
        use_distributed_sampler=False,
        callbacks=[
            DataPosition(),
            Throughput(),
            LearningRateMonitor(logging_interval="step"),
            *([ProgressBar()] if run.progress_bar else []),
            periodic,
            FinalCheckpoint(checkpoint_dir(run) / LAST),
            *extra_callbacks,
        ],
        logger=[TensorBoardLogger(out, name="logs", version="tensorboard"), CSVLogger(out, name="logs", version="csv")],
        log_every_n_steps=run.log_every_n_steps,
        enable_progress_bar=run.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=out,
    )


def quiet_lightning() -> None:
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")  # frozen blocks


def pretrain(run: RunConfig) -> Path:
    """Trains `run.method` (every stage of a multi-stage recipe) and returns the final checkpoint."""
    quiet_lightning()
    if is_recipe(run.method):
        from hybridssl.engine.stages import run_recipe

        return run_recipe(run)
    return train_run(run)


def seeded_method(run: RunConfig, info) -> Method:
    """The method with weights drawn from `run.seed` (a draw no training step uses), then --init-from."""
    seed_step(run.seed, 0, -1)
    method = build_method(run, info)
    if run.init_from:
        init_from_checkpoint(method, run.init_from)
    return method


def train_run(run: RunConfig, images: ImageSet | None = None) -> Path:
    """One run: one method, one Trainer, one folder of checkpoints and logs."""
    images = images if images is not None else load_training_images(run)
    info = data_info(run.dataset, images)
    method = seeded_method(run, info)
    if method.resolved:  # settings the method derived from the data or the model, recorded in config.yaml
        run = run.model_copy(update={"method_args": {**run.method_args, **method.resolved}})
    monitor = []
    if run.knn_monitor_every_epochs:
        monitor = [KNNMonitor.for_run(run, images, info, eval_pooling(run.method, run.method_args))]
    trainer = build_trainer(run, METHODS[run.method], monitor)
    last = checkpoint_dir(run) / LAST
    resume_from = last if run.resume and last.is_file() else None
    if rank_zero_only.rank == 0:
        save_yaml(run.dump(), Path(run.output) / "config.yaml")
    if run.accelerator == "cpu" and trainer.world_size > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, trainer.num_devices)))
    trainer.fit(PretrainModule(method, run, info), datamodule=PretrainData(images, run.batch_size, run.seed), ckpt_path=resume_from)
    return last
