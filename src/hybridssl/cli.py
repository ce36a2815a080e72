"""Command line: hybridssl pretrain | evaluate | embed | neighbours | compare | report | export | pack | bench | demo.

Every invalid input ends in one line `hybridssl: error: ...` naming the field, and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage + message; we keep one line
        raise UsageError(f"{self.prog}: {message}")


class UsageError(ValueError):
    pass


def path_or_url(value: str) -> Path | str:
    """A local path, or a URL kept as written (Path would turn s3://bucket into s3:/bucket)."""
    return value if "://" in value else Path(value)


def devices_arg(value: str) -> int | str:
    return value if value == "auto" else int(value)


def set_arg(value: str) -> tuple[str, Any]:
    """--set a.b=value: dotted path into the config, the value parsed as YAML."""
    if "=" not in value:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    key, raw = value.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def add_pretrain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", help="mae, mae-ct, cmae, can, macrl, simclr, mocov3, nnclr, ...")
    p.add_argument("--dataset", help="fashion-mnist (default), cifar10, cifar100, stl10, folder, shards")
    p.add_argument("--data-dir", type=path_or_url, help="dataset root, image folder, train/ + val/ root, or a .csv file list")
    p.add_argument("--download", action="store_true", default=None, help="download the dataset when missing (online)")
    p.add_argument("--image-size", type=int, help="folder and shards datasets: the training resolution (default: the images' median shorter side, at most 224, in whole patches)")
    add_loader_args(p)
    p.add_argument("--channels", type=int, choices=(1, 3), help="folder datasets: 1 (grey) or 3 (RGB, default)")
    p.add_argument("--strict", dest="strict_data", action="store_true", default=None, help="fail on unreadable images")
    p.add_argument("--limit-train", type=int, help="pretrain on a seeded random subset of N images")
    p.add_argument("--model", help="vit-pico (default; with --init-from: the file's), vit-tiny, vit-small, vit-base, vit-large, vit-huge")
    p.add_argument("--patch-size", type=int)
    p.add_argument("--epochs", type=int, help="training epochs (mae-ct: the MAE stage's; later stages are scaled from it)")
    p.add_argument("--max-steps", type=int, help="optimizer steps (mae-ct: a cap on every stage)")
    p.add_argument("--batch-size", type=int, help="per device")
    p.add_argument("--accumulate-grad-batches", type=int)
    p.add_argument("--lr", dest="base_lr", type=float, help="base lr for batch 256 (scaled by the effective batch)")
    p.add_argument("--seed", type=int)
    p.add_argument("--checkpoint-every-steps", type=int)
    p.add_argument("--checkpoint-every-epochs", type=int)
    p.add_argument("--keep-checkpoints", type=int, metavar="N", help="keep only the newest N periodic checkpoints")
    p.add_argument("--devices", type=devices_arg, help="N or auto")
    p.add_argument("--num-nodes", type=int)
    p.add_argument("--accelerator", help="cpu, gpu or auto")
    p.add_argument("--precision", help="auto (bf16-mixed on CUDA, 32-true on CPU), 32-true, bf16-mixed")
    p.add_argument("--output", type=Path, help="run folder (default runs/METHOD-DATASET)")
    p.add_argument("--config", type=Path,
                   help="YAML file with any of these settings, or a shipped one by name (mae/imagenet-vit-b16; "
                        "`hybridssl configs` lists them); flags override it")  # fmt: skip
    p.add_argument("--resume", action="store_true", default=None, help="continue from the newest checkpoint in OUTPUT/checkpoints")
    p.add_argument("--init-from", type=Path,
                   help="start from a checkpoint of ours, or a published ViT: official MAE (.pth), timm (state dict or "
                        ".safetensors), mmpretrain/MMSelfSup")  # fmt: skip
    p.add_argument("--set", dest="overrides", type=set_arg, action="append", default=[], metavar="KEY=VALUE",
                   help="any config field, dotted for nested ones: --set method_args.mask_ratio=0.6")  # fmt: skip
    p.add_argument("--no-progress-bar", dest="progress_bar", action="store_false", default=None)


def add_loader_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--loader", choices=("auto", "memory", "stream"),
                   help="folder datasets: decode into memory first or stream files through workers (default auto: by size)")
    p.add_argument("--num-workers", type=int, help="streaming: decoding processes per rank (default min(8, (CPUs - 1) / devices, the process's own CPUs - 1))")


def flags_to_layer(args: argparse.Namespace) -> dict[str, Any]:
    skip = {"command", "config", "overrides", "base_lr"}
    layer: dict[str, Any] = {k: v for k, v in vars(args).items() if k not in skip and v is not None}
    if args.base_lr is not None:
        layer["optim"] = {"base_lr": args.base_lr}
    for key, value in args.overrides:
        node = layer
        *parents, leaf = key.replace("-", "_").split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return layer


def start_defaults(given: dict[str, Any]) -> dict[str, Any]:
    """The settings an --init-from file decides (its model, patch and image size); imports torch, so
    it runs only once the flags and file are valid."""
    from hybridssl.weights.start import init_defaults

    return init_defaults(given)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from hybridssl.config import resolve

    run_config = resolve(flags_to_layer(args), args.config, start_defaults)  # before the heavy imports: errors come at once
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from hybridssl.engine.stages import pretrain
    from hybridssl.evaluation.monitor import monitor_callbacks

    last = pretrain(run_config, monitor_callbacks)
    if rank_zero_only.rank == 0:
        print(f"hybridssl: pretraining done; checkpoint {last}")
    return 0


def add_evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="a checkpoint of ours, or a published ViT (official MAE, timm, safetensors, mmpretrain)")
    p.add_argument("--dataset", help="default: the dataset the checkpoint was trained on (published files: required)")
    p.add_argument("--image-size", type=int,
                   help="evaluate at this size, position embeddings resampled (default: the checkpoint's own)")
    p.add_argument("--data-dir", type=path_or_url, help="dataset root; for folder: the labelled train images")
    p.add_argument("--eval-data-dir", type=path_or_url, help="for folder: the labelled test images (default: val/ of a train/ + val/ root)")
    add_loader_args(p)
    p.add_argument("--download", action="store_true")
    p.add_argument("--protocol", required=True, help="knn, linear, finetune, lowshot, clustering or all")
    add_encoder_args(p)
    p.add_argument("--output", type=Path, required=True, help="folder whose results.jsonl gets the results")
    p.add_argument("--again", action="store_true",
                   help="measure a protocol even when results.jsonl holds it for the same checkpoint, data and settings")


def add_encoder_args(p: argparse.ArgumentParser, floors: bool = True, set_flag: str = "--set", epochs_flag: str = "--epochs") -> None:
    """The evaluation flags `evaluate` and `compare` share."""
    if floors:
        p.add_argument("--random-init", action="store_true", help="evaluate the same architecture untrained")
        p.add_argument("--raw-pixels", action="store_true", help="evaluate raw pixels instead of the encoder")
        p.add_argument("--ema", action="store_true",
                       help="evaluate the EMA of the encoder the checkpoint kept (mim-refiner; mae-ct with method_args.encoder_ema)")
    p.add_argument("--pooling", choices=("cls", "mean_patch"), help="default: the method's own pooling")
    p.add_argument("--k", default="10,20,200", help="k-NN: comma-separated k values (default 10,20,200)")
    p.add_argument("--lrs", help="linear: base lrs of the probe sweep (default 0.01,0.03,0.1,0.3,1)")
    p.add_argument("--seeds", type=int, help="lowshot: seeds (subsets) per setting (default 3)")
    p.add_argument("--lowshot-subsets", help="lowshot: e.g. 1%%,10%%,1,2,5,10 (percent of labels or images per class)")
    p.add_argument("--limit-train", type=int, help="use a seeded random subset of N labelled train images")
    p.add_argument("--limit-test", type=int, help="use a seeded random subset of N test images")
    p.add_argument("--test-crop-fraction", type=float, default=1.0, metavar="FRACTION",
                   help="test images: the centre FRACTION of the shorter side, resized to image_size / FRACTION first "
                        "(timm's crop_pct; MAE and timm test ImageNet at 0.875: 256 -> 224); default 1, the whole side")
    p.add_argument("--validation", action="store_true",
                   help="measure on a class-stratified 10%% of the train split instead of the test split (to choose settings)")
    p.add_argument(epochs_flag, dest="epochs", type=int, help="epochs of every trained head (probe, fine-tune, low-shot)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(set_flag, dest="eval_overrides", type=set_arg, action="append", default=[], metavar="PROTOCOL.KEY=VALUE",
                   help="any protocol setting: --set finetune.layer_decay=0.65 --set clustering.n_init=20")  # fmt: skip


def positive(name: str, value: int | None) -> int | None:
    if value is not None and value <= 0:
        raise UsageError(f"{name}: must be positive (got {value})")
    return value


def positive_or_zero(name: str, value: int | None) -> int | None:
    if value is not None and value < 0:
        raise UsageError(f"{name}: must be 0 or more (got {value})")
    return value


def number_list(name: str, text: str, kind: type = int, positive_only: bool = True) -> tuple:
    try:
        values = tuple(kind(x) for x in text.split(","))
    except ValueError:
        raise UsageError(f"{name}: expected comma-separated {'positive ' if positive_only else ''}numbers, got {text!r}") from None
    if positive_only and any(v <= 0 for v in values):
        raise UsageError(f"{name}: expected comma-separated positive numbers, got {text!r}")
    return values


def eval_settings(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Per-protocol setting overrides from the dedicated flags and --set PROTOCOL.KEY=VALUE."""
    settings: dict[str, dict[str, Any]] = {}
    if args.lrs:
        settings.setdefault("linear", {})["base_lrs"] = number_list("lrs", args.lrs, float)
    if args.seeds is not None:
        settings.setdefault("lowshot", {})["seeds"] = args.seeds
    if args.lowshot_subsets:
        settings.setdefault("lowshot", {})["subsets"] = [s for s in args.lowshot_subsets.split(",") if s.strip()]
    for key, value in args.eval_overrides:
        protocol, _, name = key.replace("-", "_").partition(".")
        if not name:
            raise UsageError(f"set: expected PROTOCOL.KEY=VALUE, got {key!r}")
        settings.setdefault(protocol, {})[name] = value
    return settings


def eval_request_args(args: argparse.Namespace) -> dict[str, Any]:
    """The EvalRequest fields common to evaluate and compare."""
    return {
        "data_dir": args.data_dir, "eval_data_dir": getattr(args, "eval_data_dir", None),
        "limit_train": positive("limit_train", args.limit_train), "limit_test": positive("limit_test", args.limit_test),
        "epochs": positive("epochs", args.epochs), "pooling": args.pooling, "ks": tuple(sorted(set(number_list("k", args.k)))),
        "seed": args.seed, "download": bool(args.download), "settings": eval_settings(args),
        "split": "validation" if args.validation else "test",
        "test_crop_fraction": args.test_crop_fraction,  # checked by EvalRequest
        **({"loader": args.loader} if getattr(args, "loader", None) else {}),
        "num_workers": positive_or_zero("num_workers", getattr(args, "num_workers", None)),
    }  # fmt: skip


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.random_init + args.raw_pixels + args.ema > 1:
        raise UsageError("--random-init, --raw-pixels and --ema exclude each other")
    from hybridssl.nn.distributed import launched_processes, launched_world_size, rank

    if launched_world_size() > 1 and args.protocol != "finetune":
        raise UsageError(f"--protocol {args.protocol}: under torchrun only finetune runs on several processes; "
                         "run the others as one process")  # fmt: skip
    from hybridssl.evaluation.run import EvalRequest, describe, evaluate

    kind = "random-init" if args.random_init else "raw-pixels" if args.raw_pixels else "ema" if args.ema else "trained"
    req = EvalRequest(checkpoint=args.checkpoint, dataset=args.dataset, protocol=args.protocol, output=args.output,
                      encoder_kind=kind, image_size=positive("image_size", args.image_size), again=args.again,
                      **eval_request_args(args))  # fmt: skip
    results = args.output / "results.jsonl"
    lines = len(results.read_text().splitlines()) if results.is_file() else 0
    with launched_processes():
        rows = evaluate(req)
        if rank() != 0:  # the first process writes and reports
            return 0
    for r in rows:
        print(describe(r))
    appended = (len(results.read_text().splitlines()) if results.is_file() else 0) - lines
    print(f"hybridssl: {appended} result(s) appended to {results}" if appended else
          f"hybridssl: every result was already in {results} (--again measures anew)")  # fmt: skip
    return 0


def add_compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", required=True, help="comma-separated method names, or all (every registered method)")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--download", action="store_true")
    p.add_argument("--model", default="vit-pico")
    p.add_argument("--budget-epochs", type=int, help="pretraining epochs of every method (multi-stage: in total)")
    p.add_argument("--max-steps", type=int, help="cap every pretraining run at N steps (smoke tests)")
    p.add_argument("--batch-size", type=int, default=256, help="per device, the same for every method")
    p.add_argument("--accelerator", default="auto", help="cpu, gpu or auto")
    p.add_argument("--protocols", default="all", help="comma-separated protocols (default all)")
    p.add_argument("--no-floors", action="store_true", help="skip the random-init and raw-pixel floors")
    add_encoder_args(p, floors=False, set_flag="--eval-set", epochs_flag="--eval-epochs")
    p.add_argument("--output", type=Path, required=True)


def cmd_compare(args: argparse.Namespace) -> int:
    from hybridssl.compare import CompareRequest, compare, parse_methods
    from hybridssl.evaluation.run import PROTOCOLS

    if args.budget_epochs is None and args.max_steps is None:
        raise UsageError("budget_epochs: give --budget-epochs N (and/or --max-steps N for a smoke test)")
    protocols = list(PROTOCOLS) if args.protocols == "all" else [p.strip() for p in args.protocols.split(",") if p.strip()]
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown or not protocols:
        raise UsageError(f"protocols: unknown {unknown[0] if unknown else args.protocols!r}; choose from {', '.join(PROTOCOLS)} or all")
    shared = eval_request_args(args)
    evaluation = {k: shared[k] for k in ("limit_test", "epochs", "pooling", "ks", "settings", "test_crop_fraction", "split")}
    req = CompareRequest(
        methods=parse_methods(args.methods), output=args.output, dataset=args.dataset, model=args.model,
        budget_epochs=positive("budget_epochs", args.budget_epochs), max_steps=positive("max_steps", args.max_steps),
        batch_size=positive("batch_size", args.batch_size), seed=args.seed, limit_train=shared["limit_train"],
        data_dir=args.data_dir, download=args.download, accelerator=args.accelerator, protocols=protocols,
        floors=not args.no_floors, eval=evaluation,
    )  # fmt: skip
    from hybridssl.compare import CompareError

    try:
        paths = compare(req)
    except CompareError as exc:
        print(f"hybridssl: error: {exc}", file=sys.stderr)
        return 1
    print(f"hybridssl: wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from hybridssl.report.run_report import ReportOptions, write_report

    if not args.run_dir.is_dir():
        raise UsageError(f"run_dir: {args.run_dir} is not a folder")
    options = ReportOptions(embedding_samples=positive("embedding_samples", args.embedding_samples),
                            seed=args.seed, data_dir=args.data_dir, pictures=not args.no_pictures)  # fmt: skip
    path = write_report(args.run_dir, args.output, options)
    print(f"hybridssl: wrote {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from hybridssl.weights.export import TIMM_ARCHITECTURE, export_encoder

    kwargs = export_encoder(args.checkpoint, args.output, positive("image_size", args.image_size))
    print(f"hybridssl: wrote {args.output} (checked: timm built from it computes the encoder's {kwargs['global_pool']}-pooled "
          "features); load it with")  # fmt: skip
    print(f"  timm.create_model('{TIMM_ARCHITECTURE}', pretrained=False, checkpoint_path='{args.output}', **{kwargs})")
    return 0


def add_embed_args(p: argparse.ArgumentParser, checkpoint_required: bool = True) -> None:
    p.add_argument("--checkpoint", type=Path, required=checkpoint_required,
                   help="a checkpoint of ours (any stage), an export, or a published ViT (official MAE, timm, mmpretrain)")
    p.add_argument("--data-dir", type=path_or_url,
                   help="a folder (class sub-folders or flat), a train/ + val/ root, a .csv/.txt file list, or packed shards")
    p.add_argument("--dataset", help="folder (default), shards, or a named dataset (fashion-mnist, cifar10, ...)")
    p.add_argument("--split", choices=("train", "test"), default="train",
                   help="a train/ + val/ root or a named dataset: which split (test = val/); default train")
    p.add_argument("--image-size", type=int, help="embed at this size, position embeddings resampled (default: the checkpoint's)")
    p.add_argument("--mean", help="comma-separated per-channel mean (default: the file's record, else its format's default)")
    p.add_argument("--std", help="comma-separated per-channel std, with --mean")
    p.add_argument("--pooling", choices=("cls", "mean_patch"), help="default: the pooling the method was evaluated with")
    p.add_argument("--ema", action="store_true", help="the EMA of the encoder the checkpoint kept, instead of the encoder")
    p.add_argument("--limit", type=int, help="a seeded random subset of N images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-workers", type=int, help="decoding processes (default: min(8, CPUs - 1))")
    p.add_argument("--strict", action="store_true", help="stop at an unreadable image instead of leaving it out")


def embeddings_from_args(args: argparse.Namespace):
    from hybridssl.embedding.encoder import load_encoder
    from hybridssl.embedding.sources import embed_source

    mean = number_list("mean", args.mean, float, positive_only=False) if args.mean else None
    std = number_list("std", args.std, float) if args.std else None
    encoder = load_encoder(args.checkpoint, positive("image_size", args.image_size), mean=mean, std=std, pooling=args.pooling,
                           ema=args.ema)
    return embed_source(encoder, args.dataset, args.data_dir, args.split, positive("limit", args.limit), args.seed,
                        positive("batch_size", args.batch_size), positive_or_zero("num_workers", args.num_workers), args.strict)  # fmt: skip


def cmd_embed(args: argparse.Namespace) -> int:
    from hybridssl.embedding.store import save_embeddings

    emb, source = embeddings_from_args(args)
    path = save_embeddings(args.output, emb, source)
    skipped = f", {len(emb.skipped)} unreadable image(s) left out" if emb.skipped else ""
    print(f"hybridssl: wrote {path}: {emb.vectors.shape[0]} x {emb.vectors.shape[1]} embeddings ({emb.meta['pooling']} pooling, "
          f"{emb.meta['image_size']} px{skipped}); read with numpy.load(path): embeddings, paths, labels, classes, meta")  # fmt: skip
    return 0


def cmd_neighbours(args: argparse.Namespace) -> int:
    from hybridssl.embedding.store import load_embeddings
    from hybridssl.report.neighbours import write_neighbour_page

    if bool(args.embeddings) == bool(args.checkpoint):
        raise UsageError("give --embeddings FILE (one or more) or --checkpoint with --data-dir / --dataset")
    if args.embeddings:
        sets = [(str(path), load_embeddings(path)) for path in args.embeddings]
    else:
        sets = [(str(args.checkpoint), embeddings_from_args(args)[0])]
    path = write_neighbour_page(args.output, sets, positive("queries", args.queries), positive("k", args.k),
                                positive_or_zero("pairs", args.pairs), args.seed)  # fmt: skip
    print(f"hybridssl: wrote {path}")
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from hybridssl.data.pack import pack

    meta = pack(args.source, args.output, args.data_dir, args.download, args.chunk_bytes)
    sizes = ", ".join(f"{split} {n}" for split, n in meta["splits"].items())
    print(f"hybridssl: packed {args.source} into {args.output} ({sizes} images, {meta['seconds']} s); "
          f"train with --dataset shards --data-dir {args.output}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from hybridssl.demo import run_demo

    run_demo(args.output, quick=args.quick)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from hybridssl.engine.bench import bench

    flags = {"method": args.method, "model": args.model, "batch_size": args.batch_size, "patch_size": args.patch_size,
             "grad_checkpointing": args.grad_checkpointing or None}  # fmt: skip
    for key, value in args.overrides:
        flags.setdefault("method_args", {})[key.removeprefix("method_args.")] = value
    result = bench({k: v for k, v in flags.items() if v is not None}, steps=args.steps, warmup=args.warmup,
                   dataset=args.dataset, image_size=positive("image_size", args.image_size),
                   channels=args.channels, device=args.device, compile=args.compile)  # fmt: skip
    if args.json:
        print(json.dumps(result))
        return 0
    r = result
    print(f"{r['method']} {r['model']} batch {r['batch_size']} on {r['device']} ({r['precision']}): "
          f"{r['images_per_second']:.1f} img/s, {1000 * r['seconds_per_step']:.1f} ms/step, peak memory {r['peak_memory_mb']:.0f} MB")
    print(f"  {r['flops_per_step'] / 1e9:.1f} GFLOP/step -> {r['achieved_flops'] / 1e9:.1f} GFLOP/s = "
          f"{100 * r['flops_utilization']:.0f}% of the measured matmul peak ({r['matmul_peak_flops'] / 1e9:.0f} GFLOP/s)")  # fmt: skip
    return 0


def cmd_configs(args: argparse.Namespace) -> int:
    from hybridssl.shipped_configs import SHIPPED_DIR, shipped_configs, summary

    configs = shipped_configs()
    if not configs:
        print(f"no configs in {SHIPPED_DIR}: the installation is incomplete (reinstall hybridssl)", file=sys.stderr)
        return 1
    width = max(map(len, configs))
    for name, path in configs.items():
        print(f"{name:<{width}}  {summary(path)}")
    print(f"\nuse one with `hybridssl pretrain --config NAME`; to change one, copy its file from {SHIPPED_DIR}/NAME.yaml")
    return 0


def versions() -> str:
    """Ours and the versions that decide the numbers, for bug reports (read from the installed
    metadata: importing torch would cost seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    from hybridssl.version import __version__

    def installed(name: str) -> str:
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            return f"{name} not installed"

    return f"hybridssl {__version__} ({', '.join(map(installed, ('torch', 'torchvision', 'lightning', 'timm')))}; python {sys.version.split()[0]})"


class PrintVersions(argparse.Action):
    """argparse's version action, on one unwrapped line, read only when asked."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(versions())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="hybridssl", description="Self-supervised ViT pretraining: MIM + contrastive hybrids.")
    parser.add_argument("--version", action=PrintVersions, help="print the versions of hybridssl, torch, torchvision, lightning, timm and python")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    add_pretrain_args(sub.add_parser("pretrain", help="pretrain an encoder"))
    add_evaluate_args(sub.add_parser("evaluate", help="k-NN, linear probe, fine-tuning, low-shot or clustering of a checkpoint"))
    add_compare_args(sub.add_parser("compare", help="train and evaluate several methods under one budget; comparison tables"))
    p = sub.add_parser("report", help="one self-contained HTML page for a run folder: config, curves, pictures, results")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--output", type=Path, help="default: RUN_DIR/report.html")
    p.add_argument("--data-dir", type=path_or_url, help="where the run's dataset is now, if it moved")
    p.add_argument("--embedding-samples", type=int, default=1000, help="test images in the 2-D map (default 1000)")
    p.add_argument("--no-pictures", action="store_true", help="config, curves and results only (no checkpoint loading)")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("embed", help="embeddings of a folder, file list, shards or dataset split, as an .npz file")
    add_embed_args(p)
    p.add_argument("--output", type=Path, required=True, help="the .npz file to write (.npz is added when missing)")
    p = sub.add_parser("neighbours", help="an HTML page of nearest neighbours and near-duplicates of embeddings")
    p.add_argument("--embeddings", type=Path, action="append", default=[],
                   help="an .npz of `hybridssl embed`; twice (same images) for two encoders side by side")
    add_embed_args(p, checkpoint_required=False)
    p.add_argument("--queries", type=int, default=12, help="query images, drawn with --seed (default 12)")
    p.add_argument("--k", type=int, default=8, help="neighbours per query (default 8)")
    p.add_argument("--pairs", type=int, default=12, help="closest near-duplicate pairs shown (default 12)")
    p.add_argument("--output", type=Path, required=True, help="the HTML page to write")
    p = sub.add_parser("export", help="write the encoder of any checkpoint or released file as timm-loadable safetensors")
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="a checkpoint of ours (any stage) or a published ViT (official MAE, timm, mmpretrain)")
    p.add_argument("--image-size", type=int, help="export at this size, position embeddings resampled (default: the file's)")
    p.add_argument("--output", type=Path, required=True)
    p = sub.add_parser("pack", help="write a dataset as litdata shards (--dataset shards --data-dir OUTPUT reads them)")
    p.add_argument("source", help="a folder, train/ + val/ root or .csv file list, or a dataset name (fashion-mnist, cifar10, ...)")
    p.add_argument("--output", required=True, help="a folder, or a URL litdata writes to (s3://..., gs://...)")
    p.add_argument("--data-dir", type=path_or_url, help="named datasets: where their files are")
    p.add_argument("--download", action="store_true", help="named datasets: download when missing (online)")
    p.add_argument("--chunk-bytes", default="64MB", help="size of each shard file (default 64MB)")
    p = sub.add_parser("bench", help="time the training step of a method")
    p.add_argument("--method", required=True)
    p.add_argument("--model", default="vit-pico")
    p.add_argument("--dataset", default="fashion-mnist", help="image size and channels of this dataset (synthetic data)")
    p.add_argument("--image-size", type=int, help="override the dataset's image size (e.g. 224)")
    p.add_argument("--channels", type=int, choices=(1, 3), help="override the dataset's channels")
    p.add_argument("--patch-size", type=int)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--set", dest="overrides", type=set_arg, action="append", default=[], metavar="method_args.KEY=VALUE")
    p.add_argument("--compile", action="store_true", help="torch.compile the method's forward")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute block activations in the backward (less memory)")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    sub.add_parser("configs", help="list the configs shipped with the package (--config NAME): paper recipes and small-image ones")
    p = sub.add_parser("demo", help="MAE-CT tuning of the shipped Fashion-MNIST MAE on the CPU, evaluated against its floors, then a report")
    p.add_argument("--output", type=Path, default=Path("runs/demo"))
    p.add_argument("--quick", action="store_true", help="a two-minute smoke version")
    return parser


COMMANDS = {
    "pretrain": cmd_pretrain, "evaluate": cmd_evaluate, "compare": cmd_compare, "report": cmd_report,
    "export": cmd_export, "embed": cmd_embed, "neighbours": cmd_neighbours, "bench": cmd_bench, "demo": cmd_demo, "pack": cmd_pack,
    "configs": cmd_configs,
}  # fmt: skip


TCMALLOC_GLOBS = ("/usr/lib/*/libtcmalloc_minimal.so.4", "/usr/lib/libtcmalloc_minimal.so.4", "/usr/lib64/libtcmalloc_minimal.so.4")


def preload_tcmalloc() -> None:
    """Re-executes the command with tcmalloc preloaded when it is installed: on CPU it cuts the page
    faults of PyTorch's allocator (steps 1.16-1.33x faster here; BENCHMARKS.md).
    HYBRIDSSL_TCMALLOC=0 turns this off."""
    import glob
    import os

    if os.environ.get("HYBRIDSSL_TCMALLOC", "1") == "0" or "tcmalloc" in os.environ.get("LD_PRELOAD", ""):
        return
    libs = [p for pattern in TCMALLOC_GLOBS for p in glob.glob(pattern)]
    if not libs or not sys.platform.startswith("linux"):
        return
    env = {**os.environ, "LD_PRELOAD": " ".join(filter(None, [libs[0], os.environ.get("LD_PRELOAD", "")]))}
    os.execve(sys.executable, [sys.executable, "-m", "hybridssl", *sys.argv[1:]], env)


REQUEUED_HINTS = {  # how the requeued job's command goes on (a demo starts over)
    "pretrain": "it continues from there if its command has --resume",
    "evaluate": "it continues from there",
    "compare": "it continues from there",
}
RESUME_HINTS = {
    "pretrain": "resume with --resume",
    "evaluate": "run the same command again: the protocols that had finished are kept, not run again, "
    "and a fine-tune continues after its last finished epoch",
    "compare": "run the same command again: finished runs and evaluations are kept",
}


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        preload_tcmalloc()
    from hybridssl.errors import USER_ERRORS, RunRequeued, Terminated

    args = None
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except (UsageError, *USER_ERRORS) as exc:
        print(f"hybridssl: error: {exc}", file=sys.stderr)
        return 2
    except RunRequeued as exc:
        command = getattr(args, "command", None)
        if str(exc) and exc.requeued:
            print(f"hybridssl: {exc}" + (f": {REQUEUED_HINTS[command]}" if command in REQUEUED_HINTS else ""), file=sys.stderr)
        elif str(exc):
            hint = RESUME_HINTS.get(command)
            print(f"hybridssl: {exc}" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 0 if exc.requeued else 1
    except Terminated as exc:  # SIGTERM (engine/termination.py): the message says what was kept
        hint = RESUME_HINTS.get(getattr(args, "command", None))
        if str(exc):
            print(f"hybridssl: {exc}" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 143  # 128 + SIGTERM: what a job killed by it reports, so a scheduler reads it as stopped, not done
    except KeyboardInterrupt:
        hint = RESUME_HINTS.get(getattr(args, "command", None))
        print("hybridssl: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
