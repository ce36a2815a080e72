"""`hybridssl demo` end to end on the toy Fashion-MNIST fixture (a tiny budget; BENCHMARKS.md times the real one)."""

import json

from hybridssl import demo
from hybridssl.cli import main


def test_demo_writes_table_results_pictures_and_report(fmnist_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HYBRIDSSL_DATA", str(fmnist_dir))
    tiny = {"batch_size": 32, "max_steps": 1, "head_epochs": 1, "tune_epochs": 1, "limit_train": 512, "probe_epochs": 1, "limit_test": 128}
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
    assert f"moved it {knn['trained', 'mae-ct-tune'] - knn['trained', 'mae']:+.2f}" in table
