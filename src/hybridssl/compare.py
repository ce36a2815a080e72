"""`hybridssl compare`: every listed method trained and evaluated under one budget, in one folder.

Fairness: the same model, dataset, training images (`--limit-train` takes the same seeded subset),
batch size, seed and budget for every method; each method keeps its own paper recipe (optimizer,
augmentation, heads) from its registry defaults. The budget is epochs over the training images:
a single-stage method trains `--budget-epochs` epochs; a multi-stage recipe (any registered method
with `stages(run)`) gets the same total: its first stage gets the most epochs for which the epochs
of all its stages add up to at most the budget (the split is written into comparison.md/json).
Per-epoch compute differs by method (masked methods encode 25% of the tokens, contrastive ones two
full views), so the wall time of each pretraining is recorded as well. `--max-steps` caps every run
(and every stage): smoke tests, not a fair budget.

Every method is evaluated with every protocol (default all: knn, linear, finetune, lowshot,
clustering) at its own default pooling, plus the two floors once: the same ViT at random init and
raw pixels. Resumable: a re-run skips finished pretrainings and evaluations (compare-state.json)
and continues an interrupted pretraining from its last checkpoint.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridssl.evaluation.run import PROTOCOLS, EvalRequest, evaluate

STATE = "compare-state.json"
FLOORS = ("random-init", "raw-pixels")


@dataclass
class CompareRequest:
    methods: list[str]
    output: Path
    dataset: str = "fashion-mnist"
    model: str = "vit-pico"
    budget_epochs: int | None = None
    max_steps: int | None = None
    batch_size: int = 256
    seed: int = 0
    limit_train: int | None = None
    data_dir: Path | None = None
    download: bool = False
    accelerator: str = "auto"
    protocols: list[str] = field(default_factory=lambda: list(PROTOCOLS))
    floors: bool = True
    progress_bar: bool = False
    eval: dict[str, Any] = field(default_factory=dict)  # EvalRequest fields: limit_test, epochs, ks, settings, ...

    def command(self) -> str:
        """The command line that reproduces this comparison."""
        parts = ["hybridssl", "compare", "--methods", ",".join(self.methods), "--dataset", self.dataset, "--model", self.model]
        for flag, value in (("--budget-epochs", self.budget_epochs), ("--max-steps", self.max_steps), ("--batch-size", self.batch_size),
                            ("--seed", self.seed), ("--limit-train", self.limit_train), ("--data-dir", self.data_dir),
                            ("--limit-test", self.eval.get("limit_test")), ("--eval-epochs", self.eval.get("epochs"))):  # fmt: skip
            if value is not None:
                parts += [flag, str(value)]
        if self.eval.get("split") == "validation":
            parts.append("--validation")
        if self.eval.get("pooling"):
            parts += ["--pooling", self.eval["pooling"]]
        if self.eval.get("test_crop_fraction", 1.0) != 1.0:
            parts += ["--test-crop-fraction", str(self.eval["test_crop_fraction"])]
        if self.eval.get("ks"):
            parts += ["--k", ",".join(str(k) for k in self.eval["ks"])]
        if self.protocols != list(PROTOCOLS):
            parts += ["--protocols", ",".join(self.protocols)]
        for protocol, settings in sorted(self.eval.get("settings", {}).items()):
            for key, value in settings.items():
                plain = list(value) if isinstance(value, tuple) else value
                text = value if isinstance(value, str) else json.dumps(plain, separators=(",", ":"))
                parts += ["--eval-set", f"{protocol}.{key}={text}"]
        if not self.floors:
            parts.append("--no-floors")
        parts += ["--output", str(self.output)]
        return " ".join(shlex.quote(p) for p in parts)


def user_facing_methods() -> list[str]:
    """Registered methods a user trains on their own, in registry order. Left out: methods marked
    that only appear as a later stage of a recipe (they start from the previous stage's checkpoint,
    e.g. a contrastive-tuning stage)."""
    from hybridssl.config import RunConfig
    from hybridssl.methods import METHODS

    later_stages: set[str] = set()
    for name, cls in METHODS.items():
        try:
            stages = cls.stages(RunConfig.model_validate({"method": name, "epochs": 100}))
        except Exception:  # a recipe that needs more settings to list its stages
            continue
        later_stages |= {s.method for s in stages[1:]} - {name}
    return [n for n in METHODS if n not in later_stages]


def parse_methods(text: str) -> list[str]:
    from hybridssl.config import ConfigError
    from hybridssl.methods import METHODS

    if text.strip() == "all":
        return user_facing_methods()
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in METHODS]
    if not names:
        raise ConfigError("methods: none given")
    if unknown:
        raise ConfigError(f"methods: unknown {unknown[0]!r}; choose from {', '.join(user_facing_methods())} or all")
    return names


def pretrain_flags(req: CompareRequest, method: str, epochs: int | None) -> dict[str, Any]:
    return {
        "method": method, "dataset": req.dataset, "model": req.model, "batch_size": req.batch_size, "seed": req.seed,
        "limit_train": req.limit_train, "data_dir": req.data_dir, "download": req.download or None,
        "accelerator": req.accelerator, "epochs": epochs, "max_steps": req.max_steps,
        "resume": (req.output / method).exists(),  # continue an interrupted pretraining
        "output": req.output / method, "progress_bar": req.progress_bar,
    }  # fmt: skip


def stage_list(method: str, run_config) -> list[dict[str, Any]]:
    """[{folder, method, epochs}] of the method's stages ("." for a one-stage method's own folder)."""
    from hybridssl.methods import METHODS

    return [{"folder": s.folder or ".", "method": s.method, "epochs": s.epochs} for s in METHODS[method].stages(run_config)]


def budget_split(req: CompareRequest, method: str):
    """The run config whose stages' epochs add up to at most the budget (see the module docstring)."""
    from hybridssl.config import resolve

    run_config = resolve(pretrain_flags(req, method, req.budget_epochs))
    if req.budget_epochs is None:
        return run_config, stage_list(method, run_config), None
    for epochs in range(req.budget_epochs, 0, -1):
        candidate = resolve(pretrain_flags(req, method, epochs))
        stages = stage_list(method, candidate)
        if sum(s["epochs"] or 0 for s in stages) <= req.budget_epochs:
            return candidate, stages, None
    stages = stage_list(method, candidate)
    total = sum(s["epochs"] or 0 for s in stages)
    return candidate, stages, f"its stages need at least {total} epochs, more than the budget of {req.budget_epochs}"


class State:
    """Finished steps of a comparison, written after each one so an interrupted run can continue."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"pretrained": {}, "evaluated": []}

    def save(self) -> None:
        from hybridssl.files import atomic_write_text

        atomic_write_text(self.path, json.dumps(self.data, indent=1))

    def done(self, key: str) -> bool:
        return key in self.data["evaluated"]

    def mark(self, key: str) -> None:
        self.data["evaluated"].append(key)
        self.save()


def log(message: str) -> None:
    print(f"hybridssl compare: {message}", flush=True)


def pretrain_method(req: CompareRequest, method: str, state: State) -> dict[str, Any]:
    from hybridssl.engine.stages import pretrain
    from hybridssl.evaluation.monitor import monitor_callbacks

    record = state.data["pretrained"].get(method)
    if record and (req.output / record["checkpoint"]).is_file():
        log(f"{method}: pretrained already ({req.output / record['checkpoint']})")
        return record
    run_config, stages, note = budget_split(req, method)
    log(f"{method}: pretraining " + ", ".join(f"{s['folder']} ({s['method']}) {s['epochs']} epochs" for s in stages)
        + (f", at most {req.max_steps} steps each" if req.max_steps else ""))  # fmt: skip
    start = time.perf_counter()
    checkpoint = pretrain(run_config, monitor_callbacks)
    record = {"checkpoint": str(Path(checkpoint).relative_to(req.output)), "pretrain_seconds": round(time.perf_counter() - start, 1),
              "stages": stages, "epochs": run_config.epochs, "max_steps": run_config.max_steps, "budget_note": note}  # fmt: skip
    state.data["pretrained"][method] = record
    state.save()
    return record


def evaluate_checkpoint(req: CompareRequest, checkpoint: Path, output: Path, kind: str, state: State, key: str,
                        pooling: str | None = None) -> None:  # fmt: skip
    """The protocols not yet done for (checkpoint, encoder kind), on one set of features."""
    todo = [p for p in req.protocols if not (kind == "raw-pixels" and p == "finetune") and not state.done(f"{key}/{kind}/{p}")]
    if not todo:
        return
    from hybridssl.slurm import requeue_if_warned

    requeue_if_warned(f"{key}'s evaluations ({kind})")  # SLURM's warning during the evaluation before
    log(f"{key}: {', '.join(todo)} ({kind})")
    settings = {**req.eval, "pooling": pooling} if pooling else req.eval
    er = EvalRequest(checkpoint=checkpoint, dataset=req.dataset, protocol=todo[0], output=output, encoder_kind=kind,
                     data_dir=req.data_dir, download=req.download, limit_train=req.limit_train, seed=req.seed, **settings)  # fmt: skip
    evaluate(er, todo)
    for protocol in todo:
        state.mark(f"{key}/{kind}/{protocol}")


def evaluate_floors(req: CompareRequest, records: dict[str, dict[str, Any]], trained: list[str], state: State) -> None:
    """Raw pixels once; the untrained ViT at every pooling the methods were evaluated with (a CLS
    token at random init and a mean of patch tokens are different floors)."""
    from hybridssl.evaluation.results import read_results

    first = req.output / records[trained[0]]["checkpoint"]
    poolings = sorted({r["pooling"] for m in trained for r in read_results(req.output / m) if r.get("encoder") == "trained"})
    for pooling in poolings or [None]:
        key = f"floors@{pooling}" if pooling else "floors"
        evaluate_checkpoint(req, first, req.output / "floors", "random-init", state, key, pooling)
    evaluate_checkpoint(req, first, req.output / "floors", "raw-pixels", state, "floors")


def compare(req: CompareRequest) -> dict[str, Path]:
    """Trains and evaluates every method, then writes comparison.md/.json/.html; returns their paths."""
    from hybridssl.config import ConfigError
    from hybridssl.evaluation.run import protocols_for, resolve_settings
    from hybridssl.report.comparison import write_comparison
    from hybridssl.slurm import WARNING, requeue_if_warned

    probe = EvalRequest(checkpoint=Path("-"), dataset=req.dataset, protocol="all", output=req.output, **req.eval)
    resolve_settings(probe, protocols_for(probe, req.protocols))  # invalid evaluation settings fail before training
    req.output.mkdir(parents=True, exist_ok=True)
    state = State(req.output / STATE)
    fingerprint = req.command().rsplit(" --output ", 1)[0]
    if state.data.setdefault("command", fingerprint) != fingerprint:
        raise ConfigError(f"output: {req.output} holds a comparison made with other settings "
                          f"({state.data['command']}); choose another --output")  # fmt: skip
    WARNING.listen()  # under SLURM, its warning is noted and acted on between methods and evaluations
    records: dict[str, dict[str, Any]] = {}
    for method in req.methods:
        requeue_if_warned(f"{method}'s pretraining")  # SLURM's warning during the previous method's evaluations
        try:
            records[method] = pretrain_method(req, method, state)
            evaluate_checkpoint(req, req.output / records[method]["checkpoint"], req.output / method, "trained", state, method)
        except Exception as exc:  # one method's failure (a setting that does not fit the data, a NaN) spares the others
            message = f"{type(exc).__name__}: {exc}".splitlines()[0]
            log(f"{method}: FAILED, {message}")
            records[method] = {**records.get(method, {}), "error": message}
    trained = [m for m in req.methods if "error" not in records[m]]
    if req.floors and trained:
        evaluate_floors(req, records, trained, state)
    paths = write_comparison(req, records)
    failed = {m: r["error"] for m, r in records.items() if "error" in r}
    if failed:
        raise CompareError(f"{len(failed)} of {len(req.methods)} methods failed ({'; '.join(f'{m}: {e}' for m, e in failed.items())}); "
                           f"the others are in {paths['md']}")  # fmt: skip
    return paths


class CompareError(RuntimeError):
    """Some methods failed; the comparison of the others was written."""
