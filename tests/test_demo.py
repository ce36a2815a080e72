"""`hybridssl demo` end to end on the toy Fashion-MNIST fixture (a tiny budget; BENCHMARKS.md times the real one)."""

import json
from pathlib import Path

import yaml

from hybridssl import demo
from hybridssl.cli import main


def test_demo_writes_table_results_pictures_and_report(fmnist_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HYBRIDSSL_DATA", str(fmnist_dir))
    tiny = {"batch_size": 32, "max_steps": 1, "head_epochs": 1, "tune_epochs": 1, "limit_train": 512, "probe_epochs": 1, "limit_test": 128,
            "neighbour_images": 64}  # fmt: skip
    monkeypatch.setattr(demo, "QUICK", tiny)
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output", str(out)]) == 0

    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    measured = {(r["encoder"], r["protocol"], r["method"]) for r in rows}
    assert measured == {(kind, protocol, method) for kind, method in (("trained", "mae-ct-tune"), ("trained", "mae"),
                        ("random-init", "mae-ct-tune"), ("raw-pixels", "mae-ct-tune")) for protocol in ("knn", "linear")}  # fmt: skip
    assert {r["checkpoint"] for r in rows if r["method"] == "mae"} == {str(demo.MAE_START)}
    assert not (out / "pretrain" / "stage1-mae").exists(), "stage 1 ships with the package"
    for stage in ("stage2-head", "stage3-tune"):
        assert (out / "pretrain" / stage / "checkpoints" / "last.ckpt").is_file()
    assert (out / "reconstructions.png").stat().st_size > 0
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and "random-init" in html
    assert "starting point" in html and "masked reconstructions" in html, "the shipped MAE's pictures"
    table = capsys.readouterr().out
    for name in ("MAE-CT encoder", "its MAE start (shipped)", "same ViT, random init", "raw pixels"):
        assert name in table
    knn = {(r["encoder"], r["method"]): r["value"] for r in rows if r["protocol"] == "knn"}
    assert f"{knn['trained', 'mae'] - knn['random-init', 'mae-ct-tune']:+.1f} k-NN points from the same ViT at random init" in table
    assert f"tuning (2 steps on a third of the data) moved it {knn['trained', 'mae-ct-tune'] - knn['trained', 'mae']:+.2f}" in table
    assert "at full budget (all 60k images; kept records, not run now" in table
    assert "mae-ct, head 5 + tune 8 epochs                3,042        81.73    83.61   (+1.4 k-NN)" in table
    page = (out / "neighbours.html").read_text()
    assert "its MAE start (shipped)" in page and "MAE-CT encoder (this demo)" in page and page.count("data:image/png;base64,") > 20


def test_the_full_budget_rows_the_demo_prints_are_the_kept_records():
    """pretrained/full-budget.json is a copy of benchmarks/records (not a figure typed by hand)."""
    records = Path(__file__).resolve().parents[1] / "benchmarks" / "records" / "real-budgets" / "rows"
    kept = json.loads(demo.FULL_BUDGET.read_text())

    def measured(row: str) -> dict:
        rows = [json.loads(line) for line in (records / row / "results.jsonl").read_text().splitlines() if line.strip()]
        knn = [r for r in rows if r["protocol"] == "knn" and r["settings"]["k"] == 20 and r["split"] == "test"]
        linear = [r for r in rows if r["protocol"] == "linear" and r["split"] == "test"]
        return {"knn_k20": round(knn[-1]["value"], 2), "linear": round(linear[-1]["value"], 2)}

    assert {k: kept["start"][k] for k in ("knn_k20", "linear")} == measured(kept["start"]["row"])
    for row in kept["rows"]:
        assert {k: row[k] for k in ("knn_k20", "linear")} == measured(row["row"])
        config = yaml.safe_load((records / row["row"] / "config.yaml").read_text())
        args = config["method_args"]
        assert (config["method"], args["head_epochs"], args["tune_epochs"]) == (row["method"], row["head_epochs"], row["tune_epochs"])
        per_epoch = 60000 // config["batch_size"]
        assert row["steps"] == per_epoch * (args["head_epochs"] + args["tune_epochs"])
