"""`hybridssl demo` end to end on the toy Fashion-MNIST fixture (a tiny budget; the real one is ~9 min)."""

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
    measured = {(r["encoder"], r["protocol"], "stage1-mae" in r["checkpoint"]) for r in rows}
    assert measured == {(kind, protocol, stage1) for kind, stage1 in (("trained", False), ("trained", True), ("random-init", False), ("raw-pixels", False))
                        for protocol in ("knn", "linear")}  # fmt: skip
    assert all(r["method"] in ("mae-ct-tune", "mae") for r in rows)
    for stage in ("stage1-mae", "stage2-head", "stage3-tune"):
        assert (out / "pretrain" / stage / "checkpoints" / "last.ckpt").is_file()
    assert (out / "reconstructions.png").stat().st_size > 0
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and "random-init" in html
    table = capsys.readouterr().out
    for name in ("MAE-CT encoder", "its MAE start (stage 1)", "same ViT, random init", "raw pixels"):
        assert name in table
