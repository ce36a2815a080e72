"""Multi-stage recipes: each stage is a normal run in its own sub-folder, chained by checkpoint.

The recipe (methods/base.Recipe) names its stages; here each becomes a run config derived from the
recipe's run (same data, model, batch, seed, devices; the stage's method, settings and epochs; output
OUTPUT/<stage folder>; `init_from` the previous stage's final checkpoint). `--max-steps` caps every
stage. Every stage's config and method are built before the first one trains, so an invalid setting of
a late stage fails at once. With `--resume`, stages whose final checkpoint is marked finished are
skipped and the first unfinished one resumes from its own `checkpoints/last.ckpt`.
"""

from __future__ import annotations

from pathlib import Path

from lightning.fabric.utilities.rank_zero import rank_zero_only
from pydantic import ValidationError

from hybridssl.config import ConfigError, RunConfig, deep_merge, format_validation_error, save_yaml
from hybridssl.config import validate_method_args
from hybridssl.data.sources import data_info
from hybridssl.engine.checkpoints import CheckpointError, load_checkpoint
from hybridssl.engine.train import LAST, checkpoint_dir, load_training_images, seeded_method, train_run
from hybridssl.methods.base import METHODS, Stage


def stage_config(run: RunConfig, stage: Stage, init_from: Path | None) -> RunConfig:
    base = run.dump()
    optim = base["optim"]
    if stage.optim is not None:
        optim = deep_merge(METHODS[stage.method].run_defaults.get("optim", {}), stage.optim)
    values = {
        **base,
        "method": stage.method,
        "method_args": stage.method_args,
        "epochs": stage.epochs,
        "optim": optim,
        "output": str(Path(run.output) / stage.folder),
        "init_from": str(init_from) if init_from else None,
    }
    try:
        config = RunConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix=f"{stage.folder}.")) from None
    config.method_args = validate_method_args(stage.method, config.method_args)
    return config


def finished(checkpoint: Path) -> bool:
    """Whether `checkpoint` exists and was written by a run that reached its end."""
    try:
        return checkpoint.is_file() and bool(load_checkpoint(checkpoint)["hybridssl"].get("finished"))
    except CheckpointError:
        return False


def run_recipe(run: RunConfig) -> Path:
    """Runs every stage of the recipe `run.method` in order; returns the last stage's final checkpoint."""
    configs: list[RunConfig] = []
    previous = run.init_from
    for stage in METHODS[run.method].stages(run):
        configs.append(stage_config(run, stage, previous))
        previous = checkpoint_dir(configs[-1]) / LAST
    images = load_training_images(configs[0])
    info = data_info(run.dataset, images)
    for config in configs:  # every stage's settings checked against the data before any training
        seeded_method(config.model_copy(update={"init_from": None}), info)
    if rank_zero_only.rank == 0:
        save_yaml(run.dump(), Path(run.output) / "config.yaml")
    for config in configs:
        if not (run.resume and finished(checkpoint_dir(config) / LAST)):
            train_run(config, images)
    return checkpoint_dir(configs[-1]) / LAST
