"""`hybridssl report RUN_DIR`: one self-contained report.html for a run folder.

A run folder holds one or more stages (folders with a config.yaml: a plain run, the stages of a
multi-stage recipe such as stage1-mae/ stage2-head/ stage3-tune/, or the demo's pretrain/), and any
number of results.jsonl files. For every stage the page shows its config, its learning curves, a
reconstruction grid when its method reconstructs masked patches (any method
whose `reconstruct` returns a prediction), a 2-D map of its encoder's test features coloured by class,
and a few seeded test images with their nearest neighbours in those features (report/neighbours.py).
Then one table of every recorded result with its settings. Images are inline PNGs; nothing is fetched.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from hybridssl.version import __version__
from hybridssl.engine.stages import STAGES_FILE
from hybridssl.files import atomic_write_text
from hybridssl.report import html as H
from hybridssl.report.curves import curves_png, read_metrics
from hybridssl.report.scores import probe_scores, scores_png

PROTOCOL_ORDER = ("knn", "linear", "finetune", "lowshot", "clustering")
ENCODER_ORDER = ("trained", "random-init", "raw-pixels")


@dataclass
class ReportOptions:
    embedding_samples: int = 1000  # test images in the 2-D map (seeded subsample)
    neighbour_queries: int = 6  # test images of the map shown with their nearest neighbours (0: none)
    neighbours: int = 8
    reconstruction_images: int = 6
    seed: int = 0
    data_dir: Path | None = None  # overrides the data folder recorded in the config
    pictures: bool = True


@dataclass
class StageRun:
    """A folder holding one run: its resolved config and final checkpoint."""

    path: Path
    config: dict[str, Any]
    checkpoint: Path | None
    notes: list[str] = field(default_factory=list)


def find_stages(run_dir: Path) -> list[StageRun]:
    """Every folder under run_dir (itself included) with a config.yaml, in path order."""
    stages = []
    for config_file in sorted(Path(run_dir).rglob("config.yaml")):
        folder = config_file.parent
        try:
            config = yaml.safe_load(config_file.read_text()) or {}
        except yaml.YAMLError:
            continue
        if isinstance(config, dict) and "method" in config:
            stages.append(StageRun(folder, config, final_checkpoint(folder)))
    return stages


def starting_point(stages: list[StageRun], run_dir: Path) -> StageRun | None:
    """The checkpoint outside the folder that the run started from (`init_from`), when it is one of
    ours: a run tuned from a shipped or earlier MAE then shows that MAE's reconstructions too."""
    from hybridssl.weights.ours import load_checkpoint

    for stage in stages:
        start = stage.config.get("init_from")
        if start and Path(start).is_file() and not Path(start).resolve().is_relative_to(run_dir.resolve()):
            try:
                config = load_checkpoint(start, mmap=True)["hybridssl"]["config"]
            except Exception:  # a published (foreign) file: no pictures of it
                return None
            return StageRun(Path(start).parent, config, Path(start))
    return None


def final_checkpoint(folder: Path) -> Path | None:
    checkpoints = folder / "checkpoints"
    if (checkpoints / "last.ckpt").is_file():
        return checkpoints / "last.ckpt"
    found = sorted(checkpoints.glob("*.ckpt"), key=lambda p: (p.stat().st_mtime, p.name)) if checkpoints.is_dir() else []
    return found[-1] if found else None


class TestImages:
    """Labelled test images per (dataset, folder, size), loaded once for all stages."""

    def __init__(self, options: ReportOptions) -> None:
        self.options = options
        self.cache: dict[tuple, Any] = {}

    def get(self, config: dict[str, Any], info) -> tuple[Any, str]:
        from hybridssl.data.index import has_split_layout
        from hybridssl.data.sources import load_dataset

        dataset = config.get("dataset", "fashion-mnist")
        data_dir = self.options.data_dir or config.get("data_dir")
        split = "test"
        if dataset == "folder" and not (data_dir and has_split_layout(Path(data_dir))):
            split = "train"  # a plain folder run records only its training folder
        key = (dataset, str(data_dir), split, info.image_size, info.channels)
        if key not in self.cache:
            # a folder: only the images the pictures show are decoded (a sample of at most embedding_samples)
            images = load_dataset(dataset, split, data_dir, image_size=info.image_size, channels=info.channels,
                                  limit=self.options.embedding_samples, seed=self.options.seed)  # fmt: skip
            self.cache[key] = images
        return self.cache[key], f"{dataset} {split} split"


def png_from_path(path: Path) -> bytes:
    return Path(path).read_bytes()


def reconstruction_section(method, images, info, options: ReportOptions) -> bytes:
    from hybridssl.report.figures import reconstruction_grid

    sample = images.take(options.reconstruction_images, seed=options.seed).images
    with tempfile.TemporaryDirectory() as tmp:
        return png_from_path(reconstruction_grid(method, sample, info, Path(tmp) / "grid.png", seed=options.seed))


def sample_features(encoder, images, info, pooling: str, options: ReportOptions) -> tuple[Any, torch.Tensor]:
    """The seeded test sample and its features, computed once for the 2-D map and the neighbours."""
    from hybridssl.embedding.features import encoder_features

    sample = images.take(options.embedding_samples, seed=options.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return sample, encoder_features(encoder, sample.images, info, pooling, device=device)  # type: ignore[arg-type]


def embedding_section(sample, features: torch.Tensor, pooling: str, title: str, options: ReportOptions) -> tuple[bytes, str]:
    from hybridssl.report.embedding import embed_2d, embedding_png

    coords, how = embed_2d(features, seed=options.seed)
    caption = f"{title}: {how} of {len(sample)} test images, {pooling} features, coloured by class"
    return embedding_png(coords, sample.labels.numpy(), sample.classes, f"{title}: {how}, {pooling}"), caption


def stage_pictures(stage: StageRun, images: TestImages, options: ReportOptions) -> list[H.Markup]:
    """Reconstruction grid (masked methods), the embedding map and the nearest neighbours of one stage's
    final checkpoint."""
    from hybridssl.weights.ours import load_method

    if stage.checkpoint is None:
        return [H.tag("p", "no checkpoint in this stage: no pictures", class_="note")]
    out: list[H.Markup] = []
    try:
        method = load_method(stage.checkpoint)
        test, source = images.get(stage.config, method.info)
    except Exception as exc:  # missing data, foreign checkpoint: the report still renders
        return [H.tag("p", f"pictures skipped: {type(exc).__name__}: {exc}", class_="note")]
    if method.reconstructs:
        try:
            grid = reconstruction_section(method, test, method.info, options)
            caption = (f"masked reconstructions ({source}): original, masked input, reconstruction (norm-pix undone "
                       "with each patch's own mean and variance), reconstruction with the visible patches pasted back")
            out.append(H.figure(grid, caption, class_="narrow"))
        except Exception as exc:
            out.append(H.tag("p", f"reconstruction skipped: {type(exc).__name__}: {exc}", class_="note"))
    labelled = test.labels is not None and bool((test.labels >= 0).any())
    if labelled or options.neighbour_queries > 0:
        sample, features = sample_features(method.encoder, test, method.info, method.pooling, options)
    if labelled:
        png, caption = embedding_section(sample, features, method.pooling, stage.path.name, options)
        out.append(H.figure(png, caption))
    if options.neighbour_queries > 0:
        from hybridssl.report.neighbours import sample_neighbours

        labels = sample.labels.numpy() if sample.labels is not None else None
        out.append(sample_neighbours(stage.path.name, features, sample.images, labels, sample.classes,
                                     options.neighbour_queries, options.neighbours, options.seed))  # fmt: skip
    return out


def is_recipe_root(stage: StageRun) -> bool:
    """The folder of a multi-stage recipe: the engine writes the list of its stages there."""
    return (stage.path / STAGES_FILE).is_file()


def stage_section(stage: StageRun, run_dir: Path, images: TestImages | None, options: ReportOptions, level: str = "h2",
                  stages: list[StageRun] = ()) -> list[H.Markup]:  # fmt: skip
    name = str(stage.path.relative_to(run_dir)) if stage.path != run_dir else stage.path.name
    c = stage.config
    if is_recipe_root(stage):
        below = [str(s.path.relative_to(stage.path)) for s in stages if stage.path in s.path.parents]
        return [H.tag(level, f"recipe {c.get('method')} ({name})"),
                H.tag("p", f"a multi-stage recipe; its stages follow: {', '.join(below)}", class_="meta"),
                H.details("config.yaml", H.pre(yaml.safe_dump(c, sort_keys=False)))]  # fmt: skip
    budget = f"{c.get('epochs')} epochs" if c.get("epochs") else f"{c.get('max_steps')} steps"
    summary = (f"method {c.get('method')}, model {c.get('model')}, dataset {c.get('dataset')}, {budget}, "
               f"batch {c.get('batch_size')}, seed {c.get('seed')}")
    parts = [H.tag(level, f"stage {name}"), H.tag("p", summary, class_="meta")]
    if stage.checkpoint is not None:
        shown = stage.checkpoint.relative_to(run_dir) if stage.checkpoint.is_relative_to(run_dir) else stage.checkpoint
        parts.append(H.tag("p", f"checkpoint: {shown}", class_="meta"))
    parts.append(H.details("config.yaml", H.pre(yaml.safe_dump(c, sort_keys=False))))
    curves = curves_png(read_metrics(stage.path), title=f"{name}: training curves")
    if curves:
        parts.append(H.figure(curves, "learning curves from logs/csv (latest value per step)"))
    else:
        parts.append(H.tag("p", "no logged metrics", class_="note"))
    if options.pictures and images is not None:
        parts += stage_pictures(stage, images, options)
    return parts


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def result_detail(row: dict[str, Any]) -> str:
    s = row.get("settings") or {}
    protocol = row.get("protocol")
    if protocol == "knn":
        return f"k={s.get('k')}"
    if protocol == "linear":
        return f"base lr {s.get('base_lr')}, {s.get('epochs')} epochs"
    if protocol == "finetune":
        return f"{s.get('epochs')} epochs, layer decay {s.get('layer_decay')}"
    if protocol == "lowshot":
        return f"{row.get('head')} on {row.get('subset')} ({row.get('labelled')} images), {len(row.get('per_seed', []))} seeds"
    return ""


def sort_key(row: dict[str, Any]) -> tuple:
    order = lambda seq, v: seq.index(v) if v in seq else len(seq)  # noqa: E731
    return (row.get("checkpoint", ""), order(ENCODER_ORDER, row.get("encoder")), order(PROTOCOL_ORDER, row.get("protocol")))


def results_table(rows: list[dict[str, Any]], run_dir: Path | None = None) -> H.Markup:
    """Every result with what it was measured under (image size, test crop, pooling), and a note first
    when the rows were measured at different image sizes: their numbers are not comparable."""
    from hybridssl.evaluation.results import mixed_sizes_note, view_of

    headers = ["checkpoint", "encoder", "protocol", "pooling", "image size", "test crop", "metric", "value", "± std", "detail",
               "train / test", "settings"]  # fmt: skip
    body = []
    for r in sorted(rows, key=sort_key):
        checkpoint = Path(r.get("checkpoint", ""))
        if run_dir is not None and checkpoint.is_absolute() and checkpoint.is_relative_to(run_dir.resolve()):
            checkpoint = checkpoint.relative_to(run_dir.resolve())
        view = view_of(r)
        body.append([
            str(checkpoint), r.get("encoder", ""), r.get("protocol", ""), r.get("pooling", ""), view.size_text, view.crop_text,
            r.get("metric", ""), H.tag("span", fmt(r.get("value")), class_="num"), fmt(r.get("std")) if "std" in r else "",
            result_detail(r), f"{r.get('train_size', '')} / {r.get('test_size', '')}",
            H.details("settings", H.json_block(r.get("settings", {}))),
        ])  # fmt: skip
    note = mixed_sizes_note(rows)
    return H.Markup((H.tag("p", note, class_="note") if note else "") + H.table(headers, body, class_="results"))


def results_figure(rows: list[dict[str, Any]], run_dir: Path) -> bytes | None:
    """The results as one dot plot: every trained checkpoint's k-NN and linear probe against the floors,
    one dot row per image size and test crop too (in its label when the rows hold several)."""
    from hybridssl.evaluation.results import view_of

    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r.get("encoder", ""), r.get("checkpoint", ""), r.get("pooling", ""), str(view_of(r))), []).append(r)
    several_views = len({view for *_, view in groups}) > 1
    trained, floors = [], []
    for (kind, checkpoint, pooling, view), found in groups.items():
        path = Path(checkpoint)
        if path.is_absolute() and path.is_relative_to(run_dir.resolve()):
            path = path.relative_to(run_dir.resolve())
        at = f", {view}" if several_views else ""
        if kind == "trained":
            trained.append((f"{found[0].get('method', '')} ({path}{at})", probe_scores(found)))
        else:
            floors.append((f"{kind.replace('-', ' ')}, {pooling}{at}" if kind == "random-init" else kind.replace("-", " ") + at, probe_scores(found)))
    return scores_png(trained, floors)


def write_report(run_dir: Path, output: Path | None = None, options: ReportOptions | None = None) -> Path:
    from hybridssl.evaluation.results import read_results

    options = options or ReportOptions()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    stages = find_stages(run_dir)
    rows = read_results(run_dir)
    images = TestImages(options)
    body: list[Any] = [
        H.tag("h1", f"hybridssl report: {run_dir.resolve().name}"),
        H.tag("p", f"{run_dir.resolve()} | {len(stages)} stage(s), {len(rows)} result(s) | generated "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S')} by hybridssl {__version__}", class_="meta"),  # fmt: skip
    ]
    if not stages and not rows:
        body.append(H.tag("p", "no config.yaml and no results.jsonl found in this folder", class_="note"))
    body += [H.tag("h2", "results"), results_table(rows, run_dir) if rows else H.tag("p", "no results.jsonl yet", class_="note")]
    if rows and (png := results_figure(rows, run_dir)) is not None:
        body.append(H.figure(png, "k-NN and linear probe of each checkpoint (dots) against the floors (lines)"))
    start = starting_point(stages, run_dir) if options.pictures else None
    if start is not None:
        c = start.config
        body += [H.tag("h2", f"starting point: {start.checkpoint}"),
                 H.tag("p", f"init_from of this run: method {c.get('method')}, model {c.get('model')}, "
                            f"dataset {c.get('dataset')}", class_="meta"),
                 *stage_pictures(start, images, options)]  # fmt: skip
    for stage in stages:
        body += stage_section(stage, run_dir, images, options, stages=stages)
    output = output or run_dir / "report.html"
    atomic_write_text(output, H.page(f"hybridssl report: {run_dir.resolve().name}", body))
    return output

