"""`pretrain(run)`: every method is a list of stages, each a normal run, chained by checkpoint.

A plain Method is one stage in the run's own folder; a recipe (methods/base.Recipe, e.g. MAE-CT) names
several, each of which becomes a run config derived from the recipe's run (same data, model, batch,
seed, devices; the stage's method, settings and epochs; output OUTPUT/<stage folder>; `init_from` the
previous stage's final checkpoint). `--max-steps` caps every stage. Every stage's config and method
are built before the first one trains, so an invalid setting of a late stage fails at once. A recipe
writes OUTPUT/stages.yaml (what the report reads). With `--resume`, stages before the last whose final
checkpoint is marked finished are skipped; the first unfinished one resumes from its own
`checkpoints/last.ckpt`.

The run holds its output folder (engine/run_lock.py) from before its first check to its end, every
stage included (a stage's own folder too, against a run given that folder as its --output), and handles
SIGTERM (engine/termination.py) for the same time.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from lightning.fabric.utilities.rank_zero import rank_zero_only

from hybridssl.config import RunConfig, validate_method_args
from hybridssl.data.training_set import training_info
from hybridssl.weights.ours import load_checkpoint
from hybridssl.engine.train import (
    LAST,
    CallbackFactory,
    check_queues,
    check_resumable,
    checkpoint_dir,
    checkpoints_of,
    global_batch,
    load_training_data,
    newest_readable,
    other_nodes_are_not_rank_zero,
    quiet_lightning,
    refuse_a_run_folder,
    seeded_method,
    train_run,
)
from hybridssl.engine.run_lock import run_folder_lock
from hybridssl.engine.termination import TERMINATION
from hybridssl.errors import CheckpointError, Terminated
from hybridssl.files import save_yaml
from hybridssl.methods.base import METHODS, Stage
from hybridssl.settings import deep_merge, validated
from hybridssl.slurm import WARNING, requeue_if_warned

STAGES_FILE = "stages.yaml"


def stage_config(run_config: RunConfig, stage: Stage, init_from: Path | None) -> RunConfig:
    if not stage.folder:  # a one-stage method: the run itself
        return run_config
    base = run_config.dump()
    optim = base["optim"]
    if stage.optim is not None:
        optim = deep_merge(METHODS[stage.method].run_defaults.get("optim", {}), stage.optim)
    values = {
        **base,
        "method": stage.method,
        "method_args": stage.method_args,
        "epochs": stage.epochs,
        "optim": optim,
        "output": str(Path(run_config.output) / stage.folder),
        "init_from": str(init_from) if init_from else None,
    }
    config = validated(RunConfig, values, prefix=f"{stage.folder}.")
    config.method_args = validate_method_args(stage.method, config.method_args)
    return config


def finished(checkpoint: Path) -> bool:
    """Whether `checkpoint` exists and was written by a run that reached its end (tensors not read)."""
    try:
        return checkpoint.is_file() and bool(load_checkpoint(checkpoint, mmap=True)["hybridssl"].get("finished"))
    except CheckpointError:
        return False


def pretrain(run_config: RunConfig, callbacks: CallbackFactory | None = None) -> Path:
    """Trains every stage of `run.method` in order; returns the last stage's final checkpoint.
    `callbacks` adds callbacks to each stage's Trainer (the evaluation side's online k-NN monitor)."""
    quiet_lightning()
    other_nodes_are_not_rank_zero(run_config)
    WARNING.listen()  # under SLURM, its warning is noted from here on rather than ending the process
    stages = METHODS[run_config.method].stages(run_config)
    configs: list[RunConfig] = []
    previous = run_config.init_from
    for stage in stages:
        configs.append(stage_config(run_config, stage, previous))
        previous = checkpoint_dir(configs[-1]) / LAST
    with run_folder_lock(run_config.output), TERMINATION.listen():
        try:
            return train_stages(run_config, stages, configs, callbacks)
        except Terminated as exc:
            if str(exc) or rank_zero_only.rank != 0:
                raise
            raise Terminated(f"SIGTERM: stopped outside the training steps; {trained_since(configs)}") from None


def trained_since(configs: list[RunConfig]) -> str:
    """What a stop outside the training steps kept: all of it up to the newest checkpoint of the run."""
    for config in reversed(configs):
        if found := checkpoints_of(config):
            return f"nothing was trained since {found[0]}"
    return "no checkpoint had been written"


def train_stages(run_config: RunConfig, stages: list[Stage], configs: list[RunConfig], callbacks: CallbackFactory | None) -> Path:
    """`pretrain` once the output folder is held: the checks, the recipe's files and every stage in turn."""
    if not run_config.resume:  # before any file of the run folder is written (its top: a plain run there)
        for config in [run_config, *configs]:
            refuse_a_run_folder(config, checkpoints_of(config), Path(run_config.output))
    # with --resume, a stage before the last whose final checkpoint is finished is skipped
    training = [not (run_config.resume and config is not configs[-1] and finished(checkpoint_dir(config) / LAST)) for config in configs]
    images = load_training_data(configs[0])
    if len(configs) > 1:
        info = training_info(run_config.dataset, images)
        for config, trains in zip(configs, training, strict=True):
            # every stage checked against the data, and against the checkpoint it resumes, before any write
            method = seeded_method(config.model_copy(update={"init_from": None}), info)
            check_queues(method, config, len(images))
            if trains and run_config.resume and (found := checkpoints_of(config)):
                path, ckpt, _ = newest_readable(found, checkpoint_dir(config))  # the damaged ones named by train_run
                check_resumable(path, config, method, ckpt)
        if rank_zero_only.rank == 0:
            save_yaml(run_config.dump(), Path(run_config.output) / "config.yaml")
            listing = [{"folder": s.folder, "method": s.method, "epochs": s.epochs} for s in stages]
            save_yaml({"stages": listing}, Path(run_config.output) / STAGES_FILE)
    for config, trains in zip(configs, training, strict=True):
        if trains:
            requeue_if_warned(f"training {config.output}")
            # a SIGTERM in the last step of the stage before: one process stops here; several agree at the
            # next stage's first step (one leaving alone would leave the others waiting in its setup)
            if TERMINATION.received and global_batch(config) == config.batch_size:
                raise Terminated("")
            own = run_folder_lock(config.output) if Path(config.output) != Path(run_config.output) else nullcontext()
            with own:
                train_run(config, images, callbacks)
    return checkpoint_dir(configs[-1]) / LAST
