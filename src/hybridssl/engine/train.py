"""`train_run(run, images)`: one run of one method: data -> method -> Lightning Trainer -> checkpoints, logs, config."""

from __future__ import annotations

import inspect
import logging
import math
import os
import re
import shutil
import signal
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.layer_sync import LayerSync, TorchSyncBatchNorm
from lightning.pytorch.strategies import DDPStrategy
from torch.nn.parallel import DistributedDataParallel

from hybridssl.config import RunConfig
from hybridssl.data.loader import InMemoryLoader
from hybridssl.data.sources import STREAMED, DataInfo
from hybridssl.data.streaming import StreamingLoader, StreamingSet, default_workers, usable_cpus
from hybridssl.data.training_set import TrainingData, training_data, training_info
from hybridssl.data.views import Crop
from hybridssl.engine.callbacks import (
    CheckpointSettings,
    DataPosition,
    DiskRoom,
    FinalCheckpoint,
    ProgressBar,
    RollingCheckpoint,
    Throughput,
)
from hybridssl.engine.checkpoint_io import AtomicCheckpointIO
from hybridssl.weights.ours import check_fits, load_checkpoint, run_label, trained_with
from hybridssl.weights.init_from import init_from_checkpoint
from hybridssl.engine.logs import preserve_metrics
from hybridssl.engine.module import PretrainModule
from hybridssl.engine.optim import steps_per_epoch as optim_steps_per_epoch
from hybridssl.engine.randomness import seed_step
from hybridssl.engine.requeue import RequeueOnSignal
from hybridssl.engine.termination import TERMINATION
from hybridssl.weights.start import start_info
from hybridssl.errors import CheckpointError, ConfigError, DataError, DiskFullError, NonFiniteLossError, Terminated, is_disk_full
from hybridssl.files import atomic_write, save_yaml, temporary_path
from hybridssl.methods.base import METHODS, Method, build_method
from hybridssl.nn.batchnorm import convert_to_global_batchnorm
from hybridssl.nn.queue import FeatureQueue
from hybridssl.nn.vit import Pooling
from hybridssl.slurm import WARNING, requeue

# Builds extra Trainer callbacks for a run from (run, training images, data info, evaluation pooling):
# how the evaluation layer hands the engine its online monitor without the engine importing it.
CallbackFactory = Callable[[RunConfig, TrainingData, DataInfo, Pooling], Sequence[L.Callback]]

LAST = "last.ckpt"


class PretrainData(L.LightningDataModule):
    """Hands each rank its loader once the rank is known (after the processes are launched): stored
    images, or files streamed by workers that cut the method's crops (`crops`)."""

    def __init__(self, data: TrainingData, crops: list[Crop], batch_size: int, seed: int, global_images: bool = False) -> None:
        super().__init__()
        self.data, self.crops, self.batch_size, self.seed, self.global_images = data, crops, batch_size, seed, global_images

    def train_dataloader(self) -> InMemoryLoader | StreamingLoader:
        t = self.trainer
        if isinstance(self.data, StreamingSet):
            pin = t.strategy.root_device.type == "cuda"
            return self.data.loader(self.crops, self.batch_size, self.seed, t.global_rank, t.world_size, self.global_images, pin)
        return InMemoryLoader(
            self.data.images, self.data.labels, self.batch_size, self.seed, t.global_rank, t.world_size,
            global_images=self.global_images,
        )  # fmt: skip


def auto_devices(run_config: RunConfig) -> int:
    """What Lightning's devices="auto" takes: every CUDA device, one process on the CPU."""
    return max(1, torch.cuda.device_count()) if uses_cuda(run_config) else 1


def global_batch(run_config: RunConfig) -> int:
    devices = run_config.devices if isinstance(run_config.devices, int) else auto_devices(run_config)
    return run_config.batch_size * devices * run_config.num_nodes


def load_training_data(run_config: RunConfig) -> TrainingData:
    c = run_config
    devices = c.devices if isinstance(c.devices, int) else auto_devices(c)
    # decoding processes per rank: the node's CPUs shared by its ranks (8 GPUs x 8 workers oversubscribe)
    workers = c.num_workers if c.num_workers is not None else default_workers(devices)
    images = training_data(
        c.dataset, c.data_dir, image_size=c.image_size, channels=c.channels, strict=c.strict_data, loader=c.loader,
        limit=c.limit_train, seed=c.seed, num_workers=workers, download=c.download,
    )  # fmt: skip
    if len(images) < global_batch(run_config):
        raise DataError(
            f"batch_size: the {run_config.dataset} training set has {len(images)} images, fewer than one global batch "
            f"({run_config.batch_size} per device); lower --batch-size"
        )
    return images


def checkpoint_dir(run_config: RunConfig) -> Path:
    return Path(run_config.output) / "checkpoints"


def seeded_method(run_config: RunConfig, info) -> Method:
    """The method with weights drawn from `run.seed` (a draw no training step uses), then --init-from."""
    seed_step(run_config.seed, 0, -1)
    method = build_method(run_config, info)
    if run_config.init_from:
        init_from_checkpoint(method, run_config.init_from, run_config)
    return method


def check_queues(method: Method, run_config: RunConfig, num_images: int) -> None:
    """Every feature queue must hold at least one global batch and at most the training set (larger,
    it holds stale copies of every image, the query's own among its negatives)."""
    field = "method_args.queue_size" if "queue_size" in type(method).Config.model_fields else "method_args"
    for name, queue in method.named_modules():
        if not isinstance(queue, FeatureQueue):
            continue
        if queue.size < global_batch(run_config):
            raise ConfigError(
                f"{field}: the queue `{name}` holds {queue.size} entries, fewer than one global batch ({global_batch(run_config)})"
            )
        if queue.size > num_images:
            raise ConfigError(
                f"{field}: {queue.size} exceeds the {num_images} training images (the queue `{name}` would hold "
                f"stale copies of every image); lower it, e.g. to {max(1, num_images // 4)}"
            )


STEP_NAME = re.compile(r"step(\d+)(?:-v(\d+))?\.ckpt")  # periodic checkpoints, and Lightning's -vN copies
DAMAGED = ".damaged"  # the suffix a damaged checkpoint is set aside with


def checkpoint_order(path: Path) -> tuple[float, int, int]:
    """Sorts a run's checkpoints by the optimizer step they were written at: from the name of a periodic
    one, from the contents of another (last.ckpt: tensors mapped, not read), which wins a tie. A file
    whose contents cannot be read sorts first, where the resume reports it and passes on to the next."""
    named = STEP_NAME.fullmatch(path.name)
    if named:
        return int(named[1]), 0, int(named[2] or 0)
    try:
        step = load_checkpoint(path, mmap=True).get("global_step")
    except CheckpointError:
        return math.inf, 0, 0
    return (step if isinstance(step, int) else -1), 1, 0


def checkpoints_of(run_config: RunConfig) -> list[Path]:
    """The run's checkpoints, the highest step first. Not the newest file: a copy, a restore from a
    backup or a `touch` changes a modification time, and a resume from a touched older checkpoint
    silently rewound the run."""
    folder = checkpoint_dir(run_config)
    found = [p for p in folder.glob("*.ckpt") if p.is_file()] if folder.is_dir() else []
    return sorted(found, key=checkpoint_order, reverse=True)


def newest_readable(found: list[Path], folder: Path) -> tuple[Path, dict, list[CheckpointError]]:
    """The first checkpoint of `found` (highest step first) that loads (tensors mapped), with why each
    one before it does not: a torn copy or a damaged disk block must not stop a run that has an intact
    previous checkpoint. None readable: a CheckpointError naming the first (a resume never silently
    starts over in a folder of checkpoints)."""
    damaged: list[CheckpointError] = []
    for path in found:
        try:
            return path, load_checkpoint(path, mmap=True), damaged
        except CheckpointError as exc:
            damaged.append(exc)
    more = f", and {len(damaged) - 1} more" if len(damaged) > 1 else ""
    raise CheckpointError(f"resume: no checkpoint in {folder} can be read: {damaged[0]}{more}")


def refuse_a_run_folder(run_config: RunConfig, found: list[Path], output: Path | None = None) -> None:
    """Without --resume, a folder that already holds a run is refused rather than mixed with a new one."""
    if found:
        output = output or Path(run_config.output)
        raise ConfigError(
            f"output: {output} already holds a run ({found[0].relative_to(output)}); "
            "continue it with --resume or choose another --output"
        )


def check_global_batch(ckpt: dict, run_config: RunConfig) -> None:
    """Steps, the step budget and the lr schedule of a checkpoint count its own global batch: a resume
    with another one would end at the wrong epoch with the wrong lr, so it is refused."""
    saved = ckpt.get("callbacks", {}).get("DataPosition", {}).get("global_batch")
    if saved is None:
        return
    accumulate = ckpt["hybridssl"]["config"].get("accumulate_grad_batches", 1)
    before, now = saved * accumulate, global_batch(run_config) * run_config.accumulate_grad_batches
    if before != now:
        raise ConfigError(
            f"batch_size: the checkpoint was trained at a global batch of {before} ({saved} per step x accumulate "
            f"{accumulate}), this run's is {now} (batch_size {run_config.batch_size} x {now // run_config.batch_size // run_config.accumulate_grad_batches} "
            f"processes x accumulate {run_config.accumulate_grad_batches}); its steps, budget and lr schedule count the old "
            "batch: resume with the same global batch (on fewer devices, raise --accumulate-grad-batches to match) "
            "or start a new run from it with --init-from"
        )


def check_resumable(path: Path, run_config: RunConfig, method: Method, ckpt: dict | None = None) -> dict:
    """The checkpoint (tensors mapped, not read; `ckpt` when already loaded) if this run can continue it:
    same method and model, weights of the same shapes, the same global batch; refused otherwise."""
    ckpt = load_checkpoint(path, mmap=True) if ckpt is None else ckpt
    config = ckpt["hybridssl"]["config"]
    problem = f"resume: checkpoint {path} was trained with {trained_with(ckpt)}, this run is {run_label(run_config)}"
    if (config.get("method"), config.get("model")) != (run_config.method, run_config.model):
        raise CheckpointError(problem)
    check_fits(ckpt, method.state_dict(), f"{problem} with other settings", "method.")
    check_global_batch(ckpt, run_config)
    check_param_groups(ckpt, method, run_config, problem)
    return ckpt


def check_param_groups(ckpt: dict, method: Method, run_config: RunConfig, problem: str) -> None:
    """The optimizer state restores group by group: other trainable weights or another grouping (frozen
    blocks, layer decay) would fail deep in torch, so it is refused here with the sizes."""
    saved = [len(group["params"]) for state in ckpt.get("optimizer_states") or [] for group in state["param_groups"]]
    own = [len(group["params"]) for group in method.param_groups(run_config.optim.weight_decay)]
    if saved and saved != own:
        raise CheckpointError(
            f"{problem} with other settings: its optimizer holds {len(saved)} parameter groups of {saved} tensors, this "
            f"run's {len(own)} of {own} (other frozen blocks or layer decay?); resume with the checkpoint's settings "
            "or start a new run from it with --init-from"
        )


def resume_checkpoint(run_config: RunConfig, method: Method, num_images: int | None = None) -> Path | None:
    """With --resume: the checkpoint of the run folder with the highest step that can be read, checked
    against this run (the damaged ones before it are named and, by rank 0, set aside as NAME.damaged: a
    save of the same step would otherwise go to a -v1 copy beside them); without it, a folder that already
    holds a run is refused rather than mixed with a new one."""
    found = checkpoints_of(run_config)
    if not run_config.resume:
        refuse_a_run_folder(run_config, found)
        return None
    if not found:
        warnings.warn(f"--resume: no checkpoint in {checkpoint_dir(run_config)}; starting from scratch", stacklevel=2)
        return None
    path, ckpt, damaged = newest_readable(found, checkpoint_dir(run_config))
    ckpt = check_resumable(path, run_config, method, ckpt)
    if damaged and rank_zero_only.rank == 0:
        for problem, bad in zip(damaged, found, strict=False):
            bad.replace(bad.with_name(bad.name + DAMAGED))
            warnings.warn(f"resume: {problem}; set aside as {bad.name}{DAMAGED}, resuming from {path.name}, the newest "
                          "readable checkpoint", stacklevel=2)  # fmt: skip
    planned = [lam.get("total_steps") for sched in ckpt.get("lr_schedulers") or [] for lam in sched.get("lr_lambdas") or [] if lam]
    if num_images is not None and planned and planned[0] != (budget := optimizer_steps(run_config, num_images)):
        warnings.warn(f"resume: {path.name} was trained towards {planned[0]:,} optimizer steps, this run's budget is {budget:,}: "
                      "the lr schedule is stretched to the new budget from here on (as the official MAE code "
                      "recomputes it from the epochs it is given)", stacklevel=2)  # fmt: skip
    before = ckpt["hybridssl"].get("data_info", {}).get("num_images")
    if num_images is not None and before is not None and before != num_images:
        warnings.warn(f"resume: the training set had {before} images when {path.name} was written and has {num_images} now "
                      "(files added or removed?): the sample order differs from here on; the resume is not exact", stacklevel=2)  # fmt: skip
    return path


class GlobalBatchNormSync(LayerSync):
    """Lightning's layer-sync hook for devices torch's SyncBatchNorm refuses (CPU): nn/batchnorm.py."""

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        return convert_to_global_batchnorm(model)

    def revert(self, model: torch.nn.Module) -> torch.nn.Module:
        return model  # GlobalBatchNorm is plain BatchNorm on one process


def uses_cuda(run_config: RunConfig) -> bool:
    return run_config.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()


def steps_per_epoch(run_config: RunConfig, num_images: int) -> int:
    return optim_steps_per_epoch(num_images // global_batch(run_config), run_config.accumulate_grad_batches)


def optimizer_steps(run_config: RunConfig, num_images: int) -> int:
    """The run's budget in optimizer steps. The Trainer gets steps, never epochs: Lightning's epoch
    counter drifts across repeated resumes, its step counter does not (the loader counts epochs)."""
    budgets = [run_config.epochs * steps_per_epoch(run_config, num_images) if run_config.epochs else None, run_config.max_steps]
    return min(b for b in budgets if b is not None)


def checkpoint_every(run_config: RunConfig, num_images: int) -> int:
    """Optimizer steps between periodic checkpoints."""
    return run_config.checkpoint_every_steps or run_config.checkpoint_every_epochs * steps_per_epoch(run_config, num_images)


def run_plan(run_config: RunConfig, method: Method, num_images: int) -> str:
    """One line saying what the run will do, in the units that decide what it learns: images, tokens, steps."""
    enc = method.encoder.cfg
    steps = optimizer_steps(run_config, num_images)
    return (f"{run_config.method} on {num_images:,} {run_config.dataset} images at {enc.image_size} px "
            f"({enc.num_patches} tokens of {enc.patch_size} px), global batch {global_batch(run_config)}: "
            f"{steps:,} optimizer step{'' if steps == 1 else 's'} ({steps_per_epoch(run_config, num_images):,} per epoch)")


MEASURED_BATCH = 256  # the global batch at which `Method.steps_to_beat_random_init` was measured


def budget_hint(run_config: RunConfig, method: Method, num_images: int) -> str | None:
    """A note when the run sees fewer images than its method was measured to need before its linear
    probe beats the same ViT at random init (steps at batch 256, scaled to this run's batch): epochs
    mislead across dataset sizes."""
    measured = type(method).steps_to_beat_random_init
    if measured is None:
        return None
    batch = global_batch(run_config) * run_config.accumulate_grad_batches
    needed = -(-measured * MEASURED_BATCH // batch)
    steps = optimizer_steps(run_config, num_images)
    if steps >= needed:
        return None
    flags = []
    if run_config.epochs is not None and run_config.epochs * steps_per_epoch(run_config, num_images) < needed:
        flags.append(f"--epochs {-(-needed // steps_per_epoch(run_config, num_images))}")
    if run_config.max_steps is not None and run_config.max_steps < needed:
        flags.append(f"--max-steps {needed}")
    return (f"note: {run_config.method}'s linear probe was measured no better than the same ViT at random init "
            f"before about {measured:,} optimizer steps at batch {MEASURED_BATCH} (vit-pico, Fashion-MNIST; BENCHMARKS.md), "
            f"{needed:,} at this run's batch of {batch:,}; this run has {steps:,}: for features worth evaluating, "
            f"give it {' and '.join(flags)} or more")


def ddp_buffer_sync(method_cls: type[Method]) -> dict[str, bool]:
    """DDP options that skip the per-forward copy of rank 0's buffers where the method allows it."""
    if method_cls.broadcast_buffers:
        return {}
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def build_trainer(
    run_config: RunConfig, method_cls: type[Method], num_images: int, extra_callbacks: list[L.Callback] = ()
) -> L.Trainer:
    out = Path(run_config.output)
    multi = run_config.devices == "auto" or run_config.devices > 1 or run_config.num_nodes > 1
    strategy = DDPStrategy(find_unused_parameters=method_cls.find_unused_parameters, **ddp_buffer_sync(method_cls)) if multi else "auto"
    precision = run_config.precision
    if precision == "auto":
        precision = "bf16-mixed" if uses_cuda(run_config) else "32-true"
    # BatchNorm statistics of the global batch: torch's SyncBatchNorm on GPUs (DDP refuses it on CPU),
    # nn/batchnorm.py's GlobalBatchNorm elsewhere
    batchnorm_sync = [(TorchSyncBatchNorm() if uses_cuda(run_config) else GlobalBatchNormSync())] if multi else []
    # epoch checkpoints too are taken after the epoch's last step, not at Lightning's epoch end: a run
    # resumed from an epoch-end save ended its next epoch after one batch (measured)
    every_steps = checkpoint_every(run_config, num_images)
    keep = run_config.keep_checkpoints
    periodic = RollingCheckpoint(
        dirpath=checkpoint_dir(run_config),
        filename="step{step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=every_steps,
        every_n_epochs=None,
        # the newest `keep` by step; Lightning writes the new file before it deletes the oldest
        monitor="step" if keep else None,
        mode="max",
        save_top_k=keep or -1,
        save_last=False,  # last.ckpt is written once, at the end (FinalCheckpoint), not as a second copy of each save
    )
    final = FinalCheckpoint(checkpoint_dir(run_config) / LAST)
    # under SLURM its warning signal, and SIGTERM, are acted on at a step's end (engine/requeue.py), not by Lightning
    requeue_on_signal = [RequeueOnSignal(periodic, final)] if WARNING.listen() or TERMINATION.listening else []
    return L.Trainer(
        accelerator=run_config.accelerator,
        devices=run_config.devices,
        num_nodes=run_config.num_nodes,
        strategy=strategy,
        precision=precision,
        plugins=[AtomicCheckpointIO(), *batchnorm_sync],
        max_epochs=-1,
        max_steps=optimizer_steps(run_config, num_images),
        accumulate_grad_batches=run_config.accumulate_grad_batches,
        gradient_clip_val=run_config.optim.grad_clip,
        use_distributed_sampler=False,
        callbacks=[
            DataPosition(),
            *requeue_on_signal,  # after DataPosition: a checkpoint it writes counts the step's batch as consumed
            Throughput(),
            LearningRateMonitor(logging_interval="step"),
            *([ProgressBar()] if run_config.progress_bar else []),
            periodic,
            final,
            DiskRoom(checkpoint_dir(run_config), every_steps, keep),
            CheckpointSettings(periodic),
            *extra_callbacks,
        ],
        logger=[TensorBoardLogger(out, name="logs", version="tensorboard"), CSVLogger(out, name="logs", version="csv")],
        log_every_n_steps=run_config.log_every_n_steps,
        enable_progress_bar=run_config.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=out,
    )


RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")  # what Lightning reads at import


def other_nodes_are_not_rank_zero(run_config: RunConfig) -> None:
    """Under Lightning's own multi-node launch (the same command on every node, NODE_RANK set, no
    torchrun or srun) the first process of every node but node 0 has no rank variable yet, and Lightning
    counts it as rank 0 until the Trainer sets up its real rank: before that it would write the run's
    config.yaml, move metrics.csv on a resume and print, beside node 0, into the same shared folder."""
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0")))
    # a one-node run keeps rank 0 whatever it inherited: its single-device strategy never resets the rank
    if run_config.num_nodes > 1 and node > 0 and not any(name in os.environ for name in RANK_VARIABLES):
        rank_zero_only.rank = node  # any rank but 0; the Trainer's strategy sets the global one


def quiet_lightning() -> None:
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # a resume with other checkpoint settings: CheckpointSettings says what that means instead
    warnings.filterwarnings("ignore", message=r'.*Please add the following callbacks: \[("ModelCheckpoint\{[^}]*\}"(, )?)+\]')
    # on resume the CSV logger announces it will delete metrics.csv: logs.preserve_metrics has moved it to a part
    warnings.filterwarnings("ignore", message=".*Previous log files in this directory will be deleted.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")  # frozen blocks


def train_run(run_config: RunConfig, images: TrainingData, callbacks: CallbackFactory | None = None) -> Path:
    """One run: one method, one Trainer, one folder of checkpoints and logs."""
    info = start_info(training_info(run_config.dataset, images), run_config)
    method = seeded_method(run_config, info)
    if method.resolved:  # settings the method derived from the data or the model, recorded in config.yaml
        run_config = run_config.model_copy(update={"method_args": {**run_config.method_args, **method.resolved}})
    if run_config.image_size is None and run_config.dataset in STREAMED:  # chosen from the images
        run_config = run_config.model_copy(update={"image_size": info.image_size})
    check_queues(method, run_config, len(images))
    resume_from = resume_checkpoint(run_config, method, len(images))
    extra = list(callbacks(run_config, images, info, method.pooling)) if callbacks is not None else []
    if rank_zero_only.rank == 0:
        for stale in checkpoint_dir(run_config).glob(".*.tmp"):  # left by a kill during a save
            stale.unlink(missing_ok=True)
        if resume_from is not None:
            preserve_metrics(Path(run_config.output))
        save_yaml(run_config.dump(), Path(run_config.output) / "config.yaml")
    trainer = build_trainer(run_config, METHODS[run_config.method], len(images), extra)
    if rank_zero_only.rank == 0 and resume_from is None:
        print(f"hybridssl: {run_plan(run_config, method, len(images))}", flush=True)
        if (hint := budget_hint(run_config, method, len(images))) is not None:
            print(f"hybridssl: {hint}", flush=True)
    if run_config.accelerator == "cpu" and trainer.world_size > 1:
        torch.set_num_threads(max(1, min((os.cpu_count() or 1) // max(1, trainer.num_devices), usable_cpus())))
    data = PretrainData(images, method.views.crops, run_config.batch_size, run_config.seed, run_config.global_batch_views)
    sigint = signal.getsignal(signal.SIGINT)
    try:
        trainer.fit(PretrainModule(method, run_config, info, steps_per_epoch(run_config, len(images))), datamodule=data, ckpt_path=resume_from)
    except NonFiniteLossError as exc:
        kept = checkpoints_of(run_config)
        where = f"the last good checkpoint is {kept[0]}" if kept else "no checkpoint was written"
        raise NonFiniteLossError(f"{exc}; stopped, {where}") from None
    except SystemExit as exc:
        # Ctrl+C: Lightning catches the KeyboardInterrupt, shuts down, ignores SIGINT from then on and
        # exits with sys.exit(1), so the command ended silently with 1; it is a KeyboardInterrupt again
        # here (the CLI says so and exits with 130), SIGINT handled as before
        if not (trainer.interrupted and isinstance(exc.__context__, KeyboardInterrupt)):
            raise
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, sigint)
        raise KeyboardInterrupt from None
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        raise disk_full(run_config, exc) from None
    finally:
        TERMINATION.defer_to_step_ends(False)
    stop = next((c for c in trainer.callbacks if isinstance(c, RequeueOnSignal)), None)
    if stop is not None and stop.stopped_at is not None:
        where = f"stopped after step {stop.stopped_at:,}, checkpoint {stop.checkpoint()}"
        if stop.terminated:
            TERMINATION.received = False  # acted on (a process that goes on, as a test does, starts clean)
            raise Terminated(f"SIGTERM: {where}" if trainer.is_global_zero else "")
        requeue(where, ask=trainer.is_global_zero)
    last = checkpoint_dir(run_config) / LAST
    final = next(c for c in trainer.callbacks if isinstance(c, FinalCheckpoint))
    if resume_from is not None and not final.written and resume_from.name != LAST:
        # the checkpoint resumed from had reached the budget (a kill came after it, before last.ckpt):
        # the Trainer trained nothing and wrote nothing, so that checkpoint becomes the final one
        promote_to_last(resume_from, last)
    return last


def disk_full(run_config: RunConfig, exc: OSError) -> DiskFullError:
    """A full disk (or quota) during training as one line: the file that could not be written, the newest
    checkpoint, which the atomic writes left intact, and how to go on."""
    what = exc.filename or f"a file in {run_config.output}"
    kept = checkpoints_of(run_config)
    intact = f"the previous checkpoint {kept[0]} is intact" if kept else "no checkpoint had been written yet"
    return DiskFullError(
        f"disk full: {what} could not be written ({os.strerror(exc.errno)}); {intact}: free space on that disk (or keep fewer "
        "checkpoints: --keep-checkpoints N) and continue with --resume", exc.errno, exc.filename
    )  # fmt: skip


def promote_to_last(checkpoint: Path, last: Path) -> None:
    """`checkpoint` as `last`, atomically: a hard link (no copy of a GB file) where the filesystem has
    them. Every rank decides the same and writes the same content under its own temporary name, so
    no rank waits for another before its next stage reads `last`."""
    tmp = temporary_path(last)
    try:
        os.link(checkpoint, tmp)
        os.replace(tmp, last)
    except OSError:
        tmp.unlink(missing_ok=True)
        with open(checkpoint, "rb") as source:
            atomic_write(last, lambda f: shutil.copyfileobj(source, f))
