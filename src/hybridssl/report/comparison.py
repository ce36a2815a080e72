"""comparison.md, comparison.json and comparison.html of a `hybridssl compare` folder.

Cells are test top-1 in percent (clustering: accuracy, NMI and ARI in percent, silhouette in [-1, 1]);
low-shot cells are the mean ± sample standard deviation over seeds. When a cell was measured more
than once (a re-run), the latest row counts. Every table says what its rows were measured under
(pooling, image size, test crop), and the notes say so when rows were measured at different sizes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hybridssl.files import atomic_write_text
from hybridssl.evaluation.results import machine, mixed_sizes_note, read_results, sizes_text, view_of
from hybridssl.report.scores import probe_scores, scores_png

Row = dict[str, Any]
Cell = Row | None


def latest(rows: list[Row], **match: Any) -> Cell:
    found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    return found[-1] if found else None


def knn_cell(rows: list[Row]) -> Cell:
    """The k-NN row with k closest to 20 (the small-data default of docs/methods.md 8)."""
    knn = [r for r in rows if r.get("protocol") == "knn"]
    if not knn:
        return None
    best_k = min({r["settings"]["k"] for r in knn}, key=lambda k: (abs(k - 20), k))
    return [r for r in knn if r["settings"]["k"] == best_k][-1]


MAIN: list[tuple[str, Callable[[list[Row]], Cell]]] = [
    ("k-NN", knn_cell),
    ("linear", lambda rows: latest(rows, protocol="linear")),
    ("fine-tune", lambda rows: latest(rows, protocol="finetune")),
    ("1% fine-tune", lambda rows: latest(rows, protocol="lowshot", head="finetune", subset="1%")),
    ("1% linear", lambda rows: latest(rows, protocol="lowshot", head="linear", subset="1%")),
    ("cluster acc", lambda rows: latest(rows, protocol="clustering", metric="cluster_accuracy")),
    ("NMI", lambda rows: latest(rows, protocol="clustering", metric="nmi")),
]
CLUSTERING = [("cluster acc", "cluster_accuracy"), ("NMI", "nmi"), ("ARI", "ari"), ("silhouette", "silhouette")]


def cell_text(cell: Cell) -> str:
    if cell is None or cell.get("value") is None:
        return "–"
    value = cell["value"]
    text = f"{value:.3f}" if cell.get("metric") == "silhouette" else f"{value:.2f}"
    return text + (f" ± {cell['std']:.2f}" if "std" in cell else "")


def entries(req, records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per table row: the methods, then the floors."""
    out = []
    for method in req.methods:
        rows = [r for r in read_results(req.output / method) if r.get("encoder") == "trained"]
        out.append({"name": method, "kind": "method", "rows": rows, "record": records.get(method, {})})
    if req.floors and req.methods:
        floor_rows = read_results(req.output / "floors")
        first = next((m for m in req.methods if "error" not in records.get(m, {})), req.methods[0])
        untrained = [r for r in floor_rows if r.get("encoder") == "random-init"]
        for pooling in sorted({r["pooling"] for r in untrained}):
            rows = [r for r in untrained if r["pooling"] == pooling]
            out.append({"name": f"random init (floor; {first}'s ViT)", "kind": "random-init", "rows": rows, "record": {}})
        raw = [r for r in floor_rows if r.get("encoder") == "raw-pixels"]
        out.append({"name": "raw pixels (floor)", "kind": "raw-pixels", "rows": raw, "record": {}})
    return out


def lowshot_columns(all_entries: list[dict[str, Any]]) -> list[tuple[str, str]]:
    seen = {(r["head"], r["subset"]) for e in all_entries for r in e["rows"] if r.get("protocol") == "lowshot"}
    def order(key: tuple[str, str]) -> tuple:
        head, subset = key
        percent = subset.endswith("%")
        amount = float(subset.rstrip("%").removesuffix("/class"))
        return (head != "linear", not percent, amount)
    return sorted(seen, key=order)


def pooling_of(entry: dict[str, Any]) -> str:
    return ", ".join(sorted({r.get("pooling", "") for r in entry["rows"]})) or "–"


CONDITIONS = ["pooling", "image size", "test crop"]


def conditions(entry: dict[str, Any]) -> list[str]:
    """The cells of CONDITIONS for one entry: what its numbers were measured under."""
    crops = sorted({view_of(r).crop_text for r in entry["rows"]})
    return [pooling_of(entry), sizes_text(entry["rows"]), ", ".join(crops) or "–"]


def budget_text(req, records: dict[str, dict[str, Any]]) -> list[str]:
    budget = f"{req.budget_epochs} epoch{'s' if req.budget_epochs != 1 else ''}" if req.budget_epochs else "no epoch budget"
    if req.max_steps:
        budget += f", at most {req.max_steps} steps per run (smoke test, not a fair budget)"
    lines = [f"Budget: {budget} over the same {req.limit_train or 'all'} training images of {req.dataset}; "
             f"batch {req.batch_size}, seed {req.seed}, model {req.model}; each method's own recipe (optimizer, "
             "augmentation, heads) from its defaults."]
    for method, record in records.items():
        if record.get("error"):
            lines.append(f"{method} did not complete: {record['error']}")
        stages = record.get("stages", [])
        if len(stages) > 1:
            split = " + ".join(f"{s['folder']} ({s['method']}) {s['epochs']}" for s in stages)
            total = sum(s["epochs"] or 0 for s in stages)
            note = f" ({record['budget_note']})" if record.get("budget_note") else ""
            lines.append(f"Budget split of {method}: {split} = {total} epochs{note}.")
    return lines


def tables(all_entries: list[dict[str, Any]]) -> dict[str, tuple[list[str], list[list[str]]]]:
    measured = [(name, pick) for name, pick in MAIN if any(pick(e["rows"]) is not None for e in all_entries)]
    main_head = ["method", *CONDITIONS, "pretraining"] + [name for name, _ in measured]
    main = []
    for e in all_entries:
        main.append([e["name"], *conditions(e), duration(e["record"].get("pretrain_seconds"))]
                    + [cell_text(pick(e["rows"])) for _, pick in measured])  # fmt: skip
    low = lowshot_columns(all_entries)
    low_head = ["method", *CONDITIONS] + [f"{head} {subset}" for head, subset in low]
    lowshot = [[e["name"], *conditions(e)] + [cell_text(latest(e["rows"], protocol="lowshot", head=h, subset=s)) for h, s in low]
               for e in all_entries]  # fmt: skip
    clu_head = ["method", *CONDITIONS] + [name for name, _ in CLUSTERING]
    clustering = [[e["name"], *conditions(e)] + [cell_text(latest(e["rows"], protocol="clustering", metric=m)) for _, m in CLUSTERING]
                  for e in all_entries]  # fmt: skip
    clustered = any(r.get("protocol") == "clustering" for e in all_entries for r in e["rows"])
    return {"main": (main_head, main), "lowshot": (low_head, lowshot if low else []), "clustering": (clu_head, clustering if clustered else [])}


def probes_png(all_entries: list[dict[str, Any]]) -> bytes | None:
    """The dot plot; each label says its image size when the entries were measured at several."""
    mixed = mixed_sizes_note(r for e in all_entries for r in e["rows"]) is not None

    def at(e: dict[str, Any]) -> str:
        return f" ({sizes_text(e['rows'])})" if mixed else ""

    methods = [(e["name"] + at(e), probe_scores(e["rows"])) for e in all_entries if e["kind"] == "method"]
    floors = [(e["name"] + (f", {pooling_of(e)}" if e["kind"] == "random-init" else "") + at(e), probe_scores(e["rows"]))
              for e in all_entries if e["kind"] != "method"]  # fmt: skip
    return scores_png(methods, floors)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    line = lambda cells: "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("---" for _ in head) + "|", *(line(r) for r in rows)])


def knn_k(all_entries: list[dict[str, Any]]) -> str:
    ks = {c["settings"]["k"] for e in all_entries if (c := knn_cell(e["rows"])) is not None}
    return ", ".join(str(k) for k in sorted(ks)) or "–"


def protocol_text(req, all_entries: list[dict[str, Any]]) -> str:
    seeds = sorted({len(r.get("per_seed", [])) for e in all_entries for r in e["rows"] if r.get("protocol") == "lowshot"})
    limit = req.eval.get("limit_test")
    test = f"{limit} images of the {req.dataset} test split" if limit else f"the {req.dataset} test split"
    lowshot = f"low-shot cells are mean ± std over {', '.join(map(str, seeds))} seeds. " if seeds else ""
    return (f"Evaluation: {', '.join(req.protocols)} on {test}, each method at its own pooling; "
            f"k-NN column at k = {knn_k(all_entries)}; {lowshot}"
            "Every setting of every number is in the methods' results.jsonl and in comparison.json.")  # fmt: skip


def write_comparison(req, records: dict[str, dict[str, Any]]) -> dict[str, Path]:
    from hybridssl.report import html as H
    from hybridssl.report.run_report import ReportOptions, TestImages, find_stages, stage_section

    all_entries = entries(req, records)
    built = tables(all_entries)
    title = f"hybridssl comparison on {req.dataset}, {req.model}"
    mixed = mixed_sizes_note(r for e in all_entries for r in e["rows"])
    header = [f"Command: `{req.command()}`", *budget_text(req, records), protocol_text(req, all_entries), *([mixed] if mixed else []),
              f"Machine: {machine()}; generated {time.strftime('%Y-%m-%d %H:%M')}."]  # fmt: skip
    md = [f"# {title}", "", *[f"{line}\n" for line in header], "Test top-1 (%)" + ("; clustering in % (silhouette in [-1, 1])." if built["clustering"][1] else "."), "",
          markdown_table(*built["main"]), ""]  # fmt: skip
    if built["lowshot"][1]:
        md += ["## Low-shot (test top-1 %, mean ± std over seeds)", "", markdown_table(*built["lowshot"]), ""]
    if built["clustering"][1]:
        md += ["## Clustering of frozen test features (k-means, k = classes)", "", markdown_table(*built["clustering"]), ""]
    paths = {"md": req.output / "comparison.md", "json": req.output / "comparison.json", "html": req.output / "comparison.html"}
    atomic_write_text(paths["md"], "\n".join(md))

    document = {
        "command": req.command(), "dataset": req.dataset, "model": req.model, "budget_epochs": req.budget_epochs,
        "max_steps": req.max_steps, "batch_size": req.batch_size, "seed": req.seed, "limit_train": req.limit_train,
        "protocols": req.protocols, "evaluation": {k: v for k, v in req.eval.items()}, "machine": machine(),
        "notes": header[1:], "tables": {name: {"columns": head, "rows": rows} for name, (head, rows) in built.items()},
        "methods": {e["name"]: {"kind": e["kind"], **e["record"], "results": e["rows"]} for e in all_entries},
    }  # fmt: skip
    atomic_write_text(paths["json"], json.dumps(document, indent=1, default=str))

    body: list[Any] = [H.tag("h1", title), H.tag("p", ["Command: ", H.tag("code", req.command())], class_="meta")]
    body += [H.tag("p", line, class_="meta") for line in header[1:]]
    body += [H.tag("h2", "results"), H.table(*built["main"])]
    if (png := probes_png(all_entries)) is not None:
        body.append(H.figure(png, "k-NN and linear probe of each method (dots) against the floors (lines)"))
    if built["lowshot"][1]:
        body += [H.tag("h2", "low-shot"), H.table(*built["lowshot"])]
    if built["clustering"][1]:
        body += [H.tag("h2", "clustering"), H.table(*built["clustering"])]
    images, options = TestImages(ReportOptions(data_dir=req.data_dir)), ReportOptions(data_dir=req.data_dir)
    for method in req.methods:
        body.append(H.tag("h2", f"method {method}"))
        stages = find_stages(req.output / method)
        for stage in stages:
            body += stage_section(stage, req.output / method, images, options, level="h3", stages=stages)
    atomic_write_text(paths["html"], H.page(title, body))
    return paths
