"""`evaluate(...)`: one checkpoint (or its random-init twin, or raw pixels), one dataset, one protocol.

Protocols: knn, linear (lr sweep), finetune, lowshot, clustering, and `all` (every protocol that applies:
raw pixels have no encoder to fine-tune). Every result is one row of `results.jsonl` holding the
protocol, what it was measured under (the image size the encoder ran at, the test crop fraction, the
pooling) and every setting that produced it (`settings`), so a number can be re-made from its row
alone. Settings are validated before any feature is computed; errors name the field
(`finetune.layer_decay: ...`). Every phase that can take long (reading a split, features, each
protocol) shows a progress bar or a one-line stage message on stderr.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field, PositiveInt, ValidationError
from torch import Tensor

from hybridssl.version import __version__
from hybridssl.data.sources import DataInfo, ImageSet
from hybridssl.data.streaming import StreamingSet, default_workers
from hybridssl.weights.ours import TrainedEncoder
from hybridssl.weights.loading import load_trained_encoder
from hybridssl.evaluation.classifier_export import export_classifier
from hybridssl.evaluation.clustering import ClusteringSettings, clustering_metrics
from hybridssl.evaluation.data import (
    EvalData,
    centre_crop,
    decoded_when_small,
    eval_split,
    features_and_labels,
    with_classes_of,
)
from hybridssl.evaluation.finetune import FinetuneResult, FinetuneSettings, Progress, finetune
from hybridssl.evaluation.knn import knn_accuracy
from hybridssl.evaluation.linear import ProbeSettings, head_accuracies, linear_probe_sweep, train_linear_probe
from hybridssl.evaluation.lowshot import LowshotSettings, lowshot_trials
from hybridssl.evaluation.results import RESULTS, append_result, result_rows, view_of
from hybridssl.evaluation.subsets import stratified_holdout
from hybridssl.nn.distributed import launched_per_node, rank, same_on_every_process, world_size
from hybridssl.nn.vit import Pooling, ViT
from hybridssl.settings import ConfigError, StrictModel, format_validation_error
from hybridssl.slurm import WARNING, requeue_if_warned

EncoderKind = Literal["trained", "ema", "random-init", "raw-pixels"]  # ema: the EMA of the encoder a checkpoint kept


@dataclass
class EvalRequest:
    checkpoint: Path
    dataset: str | None  # None: the dataset the checkpoint was trained on
    protocol: str
    output: Path
    encoder_kind: EncoderKind = "trained"
    image_size: int | None = None  # None: the checkpoint's own (position embeddings resampled otherwise)
    data_dir: Path | None = None
    eval_data_dir: Path | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    epochs: int | None = None  # every training protocol: probe, fine-tune, low-shot
    pooling: Pooling | None = None  # None: the pooling the method was trained for
    ks: tuple[int, ...] = (10, 20, 200)
    seed: int = 0
    download: bool = False
    loader: Literal["auto", "memory", "stream"] = "auto"  # folders: decoded whole, or streamed by workers
    num_workers: int | None = None  # streaming: decoding processes; None: min(8, CPUs - 1)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # per protocol: {"finetune": {"layer_decay": 0.65}}
    # "validation": a class-stratified seeded share of the train split stands in for the test split (the
    # rest is the train split), so settings are chosen without ever reading the test images
    split: Literal["test", "validation"] = "test"
    again: bool = False  # measure even what results.jsonl already holds for the same checkpoint, data and settings
    # the test images' view: the centre of their shorter side resized to image_size / this (timm's crop_pct;
    # MAE and timm test ImageNet at 0.875); 1.0 keeps the whole shorter side. Train images stay whole.
    test_crop_fraction: float = 1.0

    def __post_init__(self) -> None:  # before any work: compare builds one before training its methods
        if not 0 < self.test_crop_fraction <= 1:
            raise ConfigError(f"test_crop_fraction: {self.test_crop_fraction} is not in (0, 1]; 0.875 is MAE's and timm's test view, 1 the whole image")


VALIDATION_FRACTION = 0.1


class KnnSettings(StrictModel):
    ks: tuple[PositiveInt, ...] = (10, 20, 200)
    temperature: float = Field(0.07, gt=0)
    standardize: bool = False  # scale by the train mean/std first (MAE-CT's online monitor does)

    def to_dict(self) -> dict:
        return {**self.model_dump(mode="json"), "similarity": "cosine", "vote": "exp(similarity / temperature)"}


SETTINGS: dict[str, type[BaseModel]] = {
    "knn": KnnSettings,
    "linear": ProbeSettings,
    "finetune": FinetuneSettings,
    "lowshot": LowshotSettings,
    "clustering": ClusteringSettings,
}


def encoder_for(req: EvalRequest) -> TrainedEncoder:
    trained = load_trained_encoder(req.checkpoint, req.image_size, ema=req.encoder_kind == "ema")
    if req.encoder_kind == "random-init":
        torch.manual_seed(req.seed)
        return trained._replace(encoder=ViT(trained.encoder.cfg).eval())
    return trained


def resolve_settings(req: EvalRequest, protocols: list[str]) -> dict[str, BaseModel]:
    """Each protocol's settings: defaults < --epochs / --k < the per-protocol overrides; validated."""
    unknown = set(req.settings) - set(SETTINGS)
    if unknown:
        raise ConfigError(f"set: unknown protocol {sorted(unknown)[0]!r}; choose one of {', '.join(SETTINGS)}")
    needed = set(protocols) | ({"linear", "finetune"} if "lowshot" in protocols else set())
    resolved = {}
    for name in SETTINGS:
        if name not in needed:
            continue
        cls = SETTINGS[name]
        layer: dict[str, Any] = {"ks": req.ks} if name == "knn" else {}
        if req.epochs is not None and "epochs" in cls.model_fields:
            layer["epochs"] = req.epochs
        try:
            resolved[name] = cls.model_validate({**layer, **req.settings.get(name, {})})
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, prefix=f"{name}.")) from None
    return resolved


def file_stamp(path: Path) -> tuple[str, int, int] | None:
    """Path, size and modification time; None when it cannot be read (loading it reports why)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


class EvalContext:
    """The images, encoder and (lazily) the frozen features that the protocols share."""

    def __init__(self, req: EvalRequest) -> None:
        self.checkpoint_stamp = file_stamp(req.checkpoint)  # before loading: what a fine-tune's progress is keyed to
        self.encoder, self.info, self.config, trained_pooling = encoder_for(req)
        # the dataset (and its folder) the checkpoint was trained on, unless told otherwise
        trained_on = self.config.get("dataset")
        dataset = req.dataset or trained_on
        if dataset is None:
            raise ConfigError(f"dataset: {req.checkpoint} records no dataset (a published encoder); give --dataset and --data-dir")
        data_dir = req.data_dir or (self.config.get("data_dir") if dataset == trained_on else None)
        local = data_dir and "://" not in str(data_dir)  # a URL of packed shards stays a string
        self.req = req = replace(req, dataset=dataset, data_dir=Path(data_dir) if local else data_dir)
        # decoding processes: the node's CPUs shared by its fine-tune processes under torchrun
        workers = req.num_workers if req.num_workers is not None else default_workers(launched_per_node())
        split = {"data_dir": req.data_dir, "eval_data_dir": req.eval_data_dir, "info": self.info, "seed": req.seed,
                 "loader": req.loader, "num_workers": workers, "download": req.download}  # fmt: skip
        stage(f"evaluate: reading the train split of {req.dataset} at {self.info.image_size} px")
        self.train = eval_split(req.dataset, "train", limit=req.limit_train, **split)
        if req.split == "validation":
            fit, held = stratified_holdout(self.train.labels, VALIDATION_FRACTION, req.seed)
            self.train, held_out = self.train.select(fit), self.train.select(held).take(req.limit_test, req.seed)
            self.test = centre_crop(held_out, req.test_crop_fraction)
        else:
            stage(f"evaluate: reading the test split of {req.dataset} ({len(self.train)} train images)")
            test = eval_split(req.dataset, "test", limit=req.limit_test, crop_fraction=req.test_crop_fraction, **split)
            self.test = with_classes_of(self.train, test)
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        self.pixels = req.encoder_kind == "raw-pixels"
        self.pooling: str = "none" if self.pixels else req.pooling or trained_pooling
        self.feature_seconds = 0.0
        self.stored_progress: list[Progress] = []  # fine-tune states to remove once their rows are written

    @cached_property
    def num_classes(self) -> int:
        """From the labels the splits list (a fine-tune needs no feature pass over them first)."""
        known = [self.train.num_classes or 0, int(self.train.labels.max()) + 1, int(self.test.labels.max()) + 1]  # type: ignore[union-attr]
        return max(known)

    def _encoded(self, data: EvalData, name: str) -> tuple[Tensor, Tensor, Tensor]:
        start = time.perf_counter()
        encoder = None if self.pixels else self.encoder
        if isinstance(data, ImageSet) and len(data):  # a streamed split has its bar already
            out = stored_features(encoder, data, self.info, self.pooling, self.device, progress=f"{name} features")
        else:
            out = features_and_labels(encoder, data, self.info, self.pooling, self.device, progress=f"{name} features")
        self.feature_seconds += time.perf_counter() - start
        return out

    @cached_property
    def _train(self) -> tuple[Tensor, Tensor, Tensor]:
        return self._encoded(self.train, "train")

    @cached_property
    def _test(self) -> tuple[Tensor, Tensor, Tensor]:
        return self._encoded(self.test, "test")

    @property
    def train_features(self) -> Tensor:
        return self._train[0]

    @property
    def train_labels(self) -> Tensor:
        return self._train[1]

    @property
    def train_rows(self) -> Tensor:
        """Each train feature's row in `self.train` (a streamed split leaves unreadable files out)."""
        return self._train[2]

    @property
    def test_features(self) -> Tensor:
        return self._test[0]

    @property
    def test_labels(self) -> Tensor:
        return self._test[1]

    def finetune(self, settings: FinetuneSettings, train_idx: Tensor | None = None, seed: int | None = None,
                 resumable: bool = False) -> FinetuneResult:  # fmt: skip
        train = self.train
        if train_idx is not None:  # positions among the train features -> the files they came from
            train = train.select(self.train_rows[train_idx])
        train = decoded_when_small(train, settings.batch_size)
        progress = self.finetune_progress(settings) if resumable else None
        result = finetune(self.encoder, train, self.test, self.info, self.num_classes, self.pooling, settings,
                          self.req.seed if seed is None else seed, self.device, progress)  # type: ignore[arg-type]  # fmt: skip
        if progress is not None:
            self.stored_progress.append(progress)
        return result

    def save_classifier(self, result: FinetuneResult, settings: FinetuneSettings) -> Path:
        """Writes the fine-tuned classifier beside the results as timm-loadable safetensors, named like
        its progress file (one per fine-tune identity and number of processes: a rerun with --again
        overwrites it)."""
        path = self.req.output / "finetuned" / f"{self.finetune_progress(settings).path.stem}.safetensors"
        if rank() != 0:
            return path
        kwargs = export_classifier(result.classifier, path, self.info, self.train.classes, self.req.test_crop_fraction)  # type: ignore[arg-type]
        print(f"finetune: wrote the classifier to {path}; load it with timm.create_model('vit_base_patch16_224', "
              f"pretrained=False, checkpoint_path='{path}', **{kwargs})", file=sys.stderr, flush=True)  # fmt: skip
        return path

    def identity(self) -> dict[str, Any]:
        """What decides every protocol's numbers besides its settings: the checkpoint as loaded (path, size,
        modification time), the encoder kind, the data, the pooling, the seed and the library's version."""
        req = self.req
        return {
            "checkpoint": self.checkpoint_stamp, "encoder": req.encoder_kind,
            "dataset": req.dataset, "data_dir": str(req.data_dir), "eval_data_dir": str(req.eval_data_dir),
            "split": req.split, "limit_train": req.limit_train, "limit_test": req.limit_test,
            "image_size": req.image_size, "train_size": len(self.train), "test_size": len(self.test),
            "pooling": self.pooling, "seed": req.seed, "version": __version__, **self.test_view(),
        }  # fmt: skip

    def test_view(self) -> dict[str, Any]:
        """The test images' centre crop, in keys and records when it is not the whole image (so keys
        measured before the setting existed stay valid). A held-out share of the train split is cropped
        from the files when it streams, from the stored images otherwise: two views, two keys."""
        if self.req.test_crop_fraction == 1.0:
            return {}
        view: dict[str, Any] = {"test_crop_fraction": self.req.test_crop_fraction}
        if self.req.split == "validation":
            view["test_crop_from"] = "files" if isinstance(self.test, StreamingSet) else "stored images"
        return view

    def finetune_progress(self, settings: FinetuneSettings) -> Progress:
        """Where a fine-tune of this request keeps its resumable state, keyed by its identity, every
        setting and the device type (a resumed run is bit-identical only on the same kind of device)."""
        processes = {"processes": world_size()} if world_size() > 1 else {}  # each one's generators are in it
        key = json.dumps({**self.identity(), **self.streamed_crops(), "settings": settings.to_dict(), "device": self.device.type, **processes}, sort_keys=True)
        return Progress(self.req.output / "finetune-progress" / f"{digest(key)}.pt", key)

    def streamed_crops(self) -> dict[str, str]:
        """Said in a fine-tune's keys and records when its crops come from the files, cut by workers (a
        streamed split), not from the stored images; absent otherwise, so earlier keys stay valid."""
        return {"crops": "cut by workers from the full-resolution files"} if isinstance(self.train, StreamingSet) else {}

    def measurement(self, protocol: str, settings: dict[str, BaseModel]) -> str:
        """The key of one protocol's result, kept in its rows: a rerun with the same key is already
        measured. Low-shot's heads are trained with the linear and fine-tune settings, so those count."""
        used = ("lowshot", "linear", "finetune") if protocol == "lowshot" else (protocol,)
        key = {**self.identity(), "protocol": protocol, "settings": {n: settings[n].model_dump(mode="json") for n in used}}
        if "finetune" in used:
            key.update(self.streamed_crops())
        return digest(json.dumps(key, sort_keys=True))


def stage(message: str) -> None:
    """One line on stderr as a phase without steps to count starts (the first process's, under torchrun)."""
    if rank() == 0:
        print(message, file=sys.stderr, flush=True)


FEATURE_BATCH = 256  # features_and_labels' batch: the same batches give the same features


def stored_features(encoder: ViT | None, data: ImageSet, info: DataInfo, pooling: str, device: torch.device,
                    progress: str, batch_size: int = FEATURE_BATCH) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """features_and_labels of an in-memory split, one batch at a time under a tqdm bar like a streamed
    split's: in one call it computes a large split silently for minutes."""
    from tqdm.auto import tqdm

    starts = tqdm(range(0, len(data), batch_size), desc=progress, unit="batch", leave=False)
    chunks = [features_and_labels(encoder, ImageSet(data.images[i : i + batch_size], None), info, pooling, device, batch_size)[0]
              for i in starts]  # fmt: skip
    return torch.cat(chunks), data.labels, torch.arange(len(data))  # type: ignore[return-value]


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


Row = dict[str, Any]


def run_knn(ctx: EvalContext, s: KnnSettings) -> list[Row]:
    accs = knn_accuracy(ctx.train_features, ctx.train_labels, ctx.test_features, ctx.test_labels, s.ks, s.temperature, s.standardize,
                        progress="knn")  # fmt: skip
    return [{"settings": {**s.to_dict(), "k": k}, "metric": "top1", "value": acc} for k, acc in accs.items()]


def run_linear(ctx: EvalContext, s: ProbeSettings) -> list[Row]:
    sweep = linear_probe_sweep(ctx.train_features, ctx.train_labels, ctx.test_features, ctx.test_labels, s, ctx.req.seed, progress="linear")
    record = {
        **s.to_dict(),
        "base_lr": sweep.selected_base_lr,
        "head": "batchnorm(affine=False, cumulative statistics) + linear",
        "optimizer": "sgd + momentum, warmup + cosine, lr = base_lr x batch / 256",
        "selection": "highest top-1 on a class-stratified seeded hold-out of the train features (ties: smaller lr); "
        "that lr is retrained on all train features and tested once",
        "holdout_size": sweep.holdout_size,
        "holdout_top1": {f"{lr:g}": acc for lr, acc in sweep.holdout_top1.items()},
    }
    return [{"settings": record, "metric": "top1", "value": sweep.test_top1}]


def finetune_record(s: FinetuneSettings, ctx: EvalContext) -> dict[str, Any]:
    return {
        **s.to_dict(),
        **ctx.streamed_crops(),
        "optimizer": "adamw, layer-wise lr decay (MAE exponents), no weight decay on norms/biases/tokens",
        "schedule": "per-step linear warmup + cosine, lr = base_lr x batch / 256",
        "augmentation": s.augmentation(),
        "head": "linear on the pooled tokens",
        "reported": "test top-1 after the last epoch",
    }


def run_finetune(ctx: EvalContext, s: FinetuneSettings) -> list[Row]:
    result = ctx.finetune(s, resumable=True)
    weights = ctx.save_classifier(result, s)
    record = {**finetune_record(s, ctx), "steps": result.steps, "lr": result.lr, "weights": str(weights.relative_to(ctx.req.output))}
    resumed = {"resumed_after_epoch": result.resumed_after_epoch, "finetune_seconds": round(result.seconds, 2)}
    return [{"settings": record, "metric": "top1", "value": result.test_top1, "final_train_loss": result.final_train_loss,
             **(resumed if result.resumed_after_epoch else {})}]  # fmt: skip


def run_clustering(ctx: EvalContext, s: ClusteringSettings) -> list[Row]:
    metrics = clustering_metrics(ctx.test_features, ctx.test_labels, ctx.num_classes, s, ctx.req.seed, progress="clustering")
    record = {**s.to_dict(), "clusters": ctx.num_classes, "split": "test"}
    rows = []
    for name, value in metrics.items():
        percent = name != "silhouette" and value is not None
        rows.append({"settings": record, "metric": name, "value": 100.0 * value if percent else value,
                     "unit": "percent" if percent else "score in [-1, 1]"})  # fmt: skip
    return rows


def run_lowshot(ctx: EvalContext, s: LowshotSettings, probe: ProbeSettings, tune: FinetuneSettings) -> list[Row]:
    probe = probe.model_copy(update={"base_lr": s.probe_base_lr})
    train_f, test_f = ctx.train_features, ctx.test_features

    def linear(idx: Tensor, seed: int) -> float:
        model = train_linear_probe(train_f[idx], ctx.train_labels[idx], ctx.num_classes, probe, seed)
        return head_accuracies(model, test_f, ctx.test_labels)[0]

    def tuned(idx: Tensor, seed: int) -> float:
        return ctx.finetune(tune, idx, seed).test_top1

    heads = {"linear": linear, "finetune": tuned}
    chosen = {h: heads[h] for h in s.heads if not (h == "finetune" and ctx.pixels)}
    head_settings = {
        "linear": {k: v for k, v in probe.to_dict().items() if k not in ("base_lrs", "holdout_fraction")},
        "finetune": finetune_record(tune, ctx),
    }
    rows = []
    for r in lowshot_trials(ctx.train_labels, s, chosen, ctx.req.seed, progress="lowshot"):
        record = {**s.to_dict(), "head_settings": head_settings[r.head], "std_over_seeds": "sample standard deviation (n - 1)"}
        rows.append({"settings": record, "head": r.head, "subset": r.subset, "labelled": r.labelled, "metric": "top1",
                     "value": r.mean, "std": r.std, "seeds": r.seeds, "per_seed": r.per_seed})  # fmt: skip
    return rows


RUNNERS: dict[str, Callable[..., list[Row]]] = {
    "knn": lambda ctx, s: run_knn(ctx, s["knn"]),
    "linear": lambda ctx, s: run_linear(ctx, s["linear"]),
    "finetune": lambda ctx, s: run_finetune(ctx, s["finetune"]),
    "lowshot": lambda ctx, s: run_lowshot(ctx, s["lowshot"], s["linear"], s["finetune"]),
    "clustering": lambda ctx, s: run_clustering(ctx, s["clustering"]),
}
PROTOCOLS = tuple(RUNNERS)
NEEDS_ENCODER = {"finetune"}


def protocols_for(req: EvalRequest, names: Sequence[str] | None = None) -> list[str]:
    """The protocols to run, in order; `all` expands to every protocol that applies to the encoder kind."""
    chosen: list[str] = []
    for name in names or [req.protocol]:
        if name == "all":
            chosen += [p for p in PROTOCOLS if not (req.encoder_kind == "raw-pixels" and p in NEEDS_ENCODER)]
        elif name not in RUNNERS:
            raise ConfigError(f"protocol: unknown {name!r}; choose one of {', '.join(PROTOCOLS)}, all")
        elif req.encoder_kind == "raw-pixels" and name in NEEDS_ENCODER:
            raise ConfigError(f"protocol: {name} trains an encoder; raw pixels have none")
        else:
            chosen.append(name)
    return list(dict.fromkeys(chosen))


def measured(output: Path) -> dict[str, list[dict[str, Any]]]:
    """The rows of output/results.jsonl by measurement key, the latest of each result (k, metric, head,
    subset) when a key was measured more than once. A key counts only when all the rows its protocol
    wrote are there (a kill between two rows leaves it unmeasured); rows written before keys existed
    have none, and a line that does not parse (torn by a kill) is skipped with a warning."""
    path = output / RESULTS
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for row in result_rows(path) if path.is_file() else []:
        if "measurement" in row:
            result = json.dumps([row.get(f) for f in ("metric", "head", "subset")] + [row["settings"].get("k")])
            found.setdefault(row["measurement"], {})[result] = row
    return {key: list(rows.values()) for key, rows in found.items()
            if len(rows) >= max(r.get("measurement_rows", 1) for r in rows.values())}  # fmt: skip


def evaluate(req: EvalRequest, protocols: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Runs `protocols` (default: req.protocol; `all` = every one that applies) on one set of images and
    features, and appends one record per result to req.output/results.jsonl as each protocol ends.
    A protocol whose result is already there for the same checkpoint, data and settings is not run again
    (its rows are returned; a rerun after a kill redoes only what was unfinished) unless req.again."""
    protocols = protocols_for(req, protocols)
    if world_size() > 1 and protocols != ["finetune"]:
        raise ConfigError(f"protocol: only finetune runs on several processes; run {', '.join(p for p in protocols if p != 'finetune')} without torchrun")
    settings = resolve_settings(req, protocols)
    WARNING.listen()  # under SLURM, its warning is noted and acted on between protocols and fine-tune epochs
    ctx = EvalContext(req)
    base = {
        "method": ctx.config["method"],
        "model": ctx.config["model"],
        "checkpoint": str(req.checkpoint),
        "encoder": req.encoder_kind,
        "dataset": ctx.req.dataset,
        "split": req.split if req.split == "test" else f"validation ({VALIDATION_FRACTION:.0%} of train, class-stratified)",
        "train_size": len(ctx.train),
        "test_size": len(ctx.test),
        # what the numbers were measured under, in every row (the keys hold them only where they always did)
        "image_size": ctx.info.image_size,  # the size the encoder ran at, asked for or its own
        "test_crop_fraction": req.test_crop_fraction,
        "pooling": ctx.pooling,
        "seed": req.seed,
        **ctx.test_view(),
    }
    written = []
    before = {} if req.again else measured(req.output)
    for protocol in protocols:
        key = ctx.measurement(protocol, settings)
        if same_on_every_process(key in before, f"whether {protocol} is already measured"):
            print(f"{protocol}: already measured for this checkpoint, data and settings ({before[key][-1]['time']}); "
                  f"kept, not run again (--again measures it anew)", file=sys.stderr, flush=True)  # fmt: skip
            written += before[key]
            continue
        requeue_if_warned(f"the {protocol} protocol")  # SLURM's warning during the protocol before
        start, features_before = time.perf_counter(), ctx.feature_seconds
        rows = RUNNERS[protocol](ctx, settings)
        timing = {"feature_seconds": round(ctx.feature_seconds - features_before, 2), "wall_seconds": round(time.perf_counter() - start, 2)}
        measurement = {"measurement": key, "measurement_rows": len(rows)}
        if rank() == 0:  # under several processes (a distributed fine-tune) the first one writes
            written += [append_result(req.output, {**base, "protocol": protocol, **row, **timing, **measurement}) for row in rows]
            for progress in ctx.stored_progress:  # its result is stored: the state is no longer needed
                progress.path.unlink(missing_ok=True)
        ctx.stored_progress.clear()
    return written


def describe(row: dict[str, Any]) -> str:
    """One line per result for the terminal, with the image size (and test crop) it was measured at."""
    value = row["value"]
    shown = "n/a" if value is None else f"{value:.2f}" + (f" ± {row['std']:.2f}" if "std" in row else "")
    detail = {"knn": lambda r: f"k={r['settings']['k']}", "linear": lambda r: f"lr={r['settings']['base_lr']:g}",
              "lowshot": lambda r: f"{r['head']} {r['subset']}"}.get(row["protocol"], lambda r: "")(row)  # fmt: skip
    view = str(view_of(row))
    return f"{row['protocol']:<10} {row['encoder']:<11} {row['pooling']:<10} {view:<8} {row['metric']:<16} {shown:<14} {detail}".rstrip()
