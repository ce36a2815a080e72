"""`hybridssl report`: curves from the CSV logs, pictures, the results table, and a page that renders."""

import os
import re
import shutil
import time

import pytest

from hybridssl.cli import main
from hybridssl.evaluation.results import append_result
from hybridssl.report.curves import read_metrics
from hybridssl.report.run_report import ReportOptions, write_report
from tests.report.browser import rendered_dom

OPTIONS = ReportOptions(embedding_samples=60, reconstruction_images=3, neighbour_queries=0)  # the neighbour section: tests/report/test_neighbours.py


def images_in(page: str) -> list[str]:
    return re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)


def test_metrics_from_all_log_parts_keep_the_latest_value_per_step(tmp_path):
    logs = tmp_path / "logs" / "csv"
    logs.mkdir(parents=True)
    (logs / "metrics-old.csv").write_text("epoch,step,train/loss\n0,0,5.0\n0,1,4.0\n0,2,3.0\n")
    time.sleep(0.01)
    os.utime(logs / "metrics-old.csv", (1, 1))  # oldest part
    # the resumed part replays step 2 and logs the lr in rows of its own
    (logs / "metrics.csv").write_text("epoch,lr-AdamW,step,train/loss\n0,,2,2.5\n0,0.1,2,\n0,,3,2.0\n0,0.05,3,\n")
    series = read_metrics(tmp_path)
    assert series["train/loss"] == [(0, 5.0), (1, 4.0), (2, 2.5), (3, 2.0)]
    assert series["lr-AdamW"] == [(2, 0.1), (3, 0.05)]


@pytest.fixture(scope="module")
def reported_run(tiny_mae_run, fmnist_dir, tmp_path_factory):
    """A copy of the tiny run with results of every protocol kind, one of them carrying markup."""
    run = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(tiny_mae_run, run)
    ckpt = str(run / "checkpoints" / "last.ckpt")
    common = ["evaluate", "--checkpoint", ckpt, "--data-dir", str(fmnist_dir), "--output", str(run), "--limit-train", "100",
              "--limit-test", "50", "--epochs", "1"]  # fmt: skip
    assert main([*common, "--protocol", "knn", "--k", "5"]) == 0
    assert main([*common, "--protocol", "clustering", "--raw-pixels"]) == 0
    append_result(run, {"protocol": "knn", "encoder": "trained", "pooling": "cls", "metric": "top1", "value": 1.0,
                        "settings": {"note": "<script>alert(1)</script>"}})  # fmt: skip
    path = write_report(run, options=ReportOptions(**{**OPTIONS.__dict__, "data_dir": fmnist_dir}))
    return run, path


def test_report_holds_curves_reconstructions_embedding_and_the_results_table(reported_run):
    run, path = reported_run
    page = path.read_text()
    assert path == run / "report.html"
    assert len(images_in(page)) == 4, "curves, reconstruction grid, embedding map, results figure"
    assert "against the floors" in page
    for words in ("learning curves", "masked reconstructions", "t-SNE", "coloured by class", "config.yaml"):
        assert words in page
    table = page[page.index('<table class="results">') : page.index("</table>")]
    assert table.count("<tr>") == 1 + 1 + 4 + 1, "header, k-NN, 4 clustering metrics, the extra row"
    assert "cluster_accuracy" in table and "raw-pixels" in table and "k=5" in table
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page, "text is escaped"
    assert "http://" not in page and "https://" not in page, "self-contained"


def test_report_of_a_multi_stage_folder_and_the_cli(tiny_mae_run, fmnist_dir, tmp_path, capsys):
    for stage in ("stage1-mae", "stage2-head"):
        shutil.copytree(tiny_mae_run, tmp_path / stage, ignore=shutil.ignore_patterns("report.html"))
    shutil.copy(tiny_mae_run / "config.yaml", tmp_path / "config.yaml")  # the recipe's own config, as MAE-CT writes it
    (tmp_path / "stages.yaml").write_text("stages: []\n")  # and the list of its stages
    assert main(["report", str(tmp_path), "--data-dir", str(fmnist_dir), "--embedding-samples", "40", "--no-pictures"]) == 0
    page = (tmp_path / "report.html").read_text()
    assert "stage stage1-mae" in page and "stage stage2-head" in page
    assert "its stages follow: stage1-mae, stage2-head" in page
    assert len(images_in(page)) == 2, "curves of both stages (pictures switched off)"
    assert "no results.jsonl yet" in page
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_report_renders_in_headless_chromium_without_console_errors(reported_run, tmp_path):
    _, path = reported_run
    dom = rendered_dom(path, tmp_path)
    assert 'data-images="4"' in dom and 'data-broken="0"' in dom
    assert '<table class="results">' in dom and "cluster_accuracy" in dom


