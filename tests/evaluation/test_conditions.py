"""What every result was measured under (image size, test crop, pooling): in each results.jsonl row, on
the terminal, in the run report's table and figure; old rows without those keys stay readable. And the
progress `evaluate` shows for every phase that can take long."""

import json
import re

import pytest
import torch

from hybridssl.cli import main
from hybridssl.evaluation.results import append_result, mixed_sizes_note, read_results, view_of
from hybridssl.evaluation.run import EvalContext, EvalRequest, describe, evaluate, resolve_settings
from hybridssl.report.run_report import results_table

# the keys of a measurement as results.jsonl files already hold them: adding one would measure them all again
IDENTITY_KEYS = {"checkpoint", "encoder", "dataset", "data_dir", "eval_data_dir", "split", "limit_train", "limit_test",
                 "image_size", "train_size", "test_size", "pooling", "seed", "version"}  # fmt: skip


def rows(folder):
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


def test_every_row_records_the_size_the_encoder_ran_at_asked_for_or_not(tiny_mae_run, photo_root, tmp_path, capsys):
    """The user's case: one encoder at its own size and at another; the rows must say which is which."""
    ckpt = str(tiny_mae_run / "checkpoints" / "last.ckpt")
    common = ["evaluate", "--checkpoint", ckpt, "--dataset", "folder", "--data-dir", str(photo_root), "--protocol", "knn",
              "--k", "5", "--output", str(tmp_path)]  # fmt: skip
    assert main(common) == 0 and main([*common, "--image-size", "56"]) == 0
    own, larger = rows(tmp_path)
    assert (own["image_size"], larger["image_size"]) == (28, 56), "no --image-size: the checkpoint's own size, recorded"
    assert own["test_crop_fraction"] == larger["test_crop_fraction"] == 1.0 and own["pooling"] == larger["pooling"] == "mean_patch"
    out = capsys.readouterr().out
    assert "mean_patch 28 px" in out and "mean_patch 56 px" in out, "the terminal lines say the size too"


def test_the_measurement_key_is_unchanged_so_earlier_results_stay_measured(tiny_mae_run, fmnist_dir, tmp_path):
    req = EvalRequest(checkpoint=tiny_mae_run / "checkpoints" / "last.ckpt", dataset=None, protocol="knn", output=tmp_path,
                      data_dir=fmnist_dir, limit_train=64, limit_test=32, ks=(5,))  # fmt: skip
    ctx = EvalContext(req)
    assert set(ctx.identity()) == IDENTITY_KEYS and ctx.identity()["image_size"] is None, "the request's size, as always"
    written = evaluate(req)
    assert written[0]["image_size"] == 28 and written[0]["measurement"] == ctx.measurement("knn", resolve_settings(req, ["knn"]))
    # rows written before the new fields existed: still the same measurement, kept and readable
    old = {k: v for k, v in written[0].items() if k not in ("image_size", "test_crop_fraction")}
    (tmp_path / "results.jsonl").write_text(json.dumps(old) + "\n")
    assert evaluate(req) == [old]
    assert view_of(old) == (None, 1.0, "mean_patch") and "size not recorded" in describe(old)


def result(checkpoint: str, size: int | None, value: float, **extra) -> dict:
    row = {"checkpoint": checkpoint, "method": "mae", "encoder": "trained", "protocol": "knn", "pooling": "cls",
           "metric": "top1", "value": value, "settings": {"k": 20}, **extra}  # fmt: skip
    return row if size is None else {**row, "image_size": size, "test_crop_fraction": 1.0}


def cells(table: str) -> list[list[str]]:
    return [re.findall(r"<td>(.*?)</td>", tr, re.S) for tr in re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:]]


def test_the_report_table_shows_each_rows_size_and_crop_and_warns_when_sizes_mix():
    released, tuned = result("released.pth", 224, 97.0), result("tuned.ckpt", 112, 94.7)
    old = result("old.ckpt", None, 90.0, test_crop_fraction=0.875)  # written when only a crop below 1 was recorded
    table = str(results_table([released, tuned, old]))
    head = re.findall(r"<th>(.*?)</th>", table)
    by_checkpoint = {c[0]: dict(zip(head, c)) for c in cells(table)}
    assert by_checkpoint["released.pth"]["image size"] == "224 px" and by_checkpoint["tuned.ckpt"]["image size"] == "112 px"
    assert by_checkpoint["old.ckpt"]["image size"] == "size not recorded"
    assert by_checkpoint["tuned.ckpt"]["test crop"] == "whole" and by_checkpoint["old.ckpt"]["test crop"] == "centre 0.875"
    assert table.index("different image sizes (112 px, 224 px, size not recorded)") < table.index("<table")
    assert "different image sizes" not in str(results_table([released, result("other.ckpt", 224, 96.0)]))


def test_the_report_figure_gives_each_size_its_own_labelled_dots(monkeypatch, tmp_path):
    import hybridssl.report.run_report as run_report

    drawn = []
    monkeypatch.setattr(run_report, "scores_png", lambda trained, floors: drawn.append(trained))
    same = [result("enc.ckpt", 224, 97.0), result("enc.ckpt", 112, 94.7)]  # one checkpoint at two sizes
    run_report.results_figure(same, tmp_path)
    assert sorted(drawn[0]) == [("mae (enc.ckpt, 112 px)", {"k-NN (k=20)": 94.7, "linear": None}),
                                ("mae (enc.ckpt, 224 px)", {"k-NN (k=20)": 97.0, "linear": None})]  # fmt: skip
    run_report.results_figure(same[:1], tmp_path)
    assert drawn[1] == [("mae (enc.ckpt)", {"k-NN (k=20)": 97.0, "linear": None})], "one size: labels as before"


def test_old_rows_read_as_what_they_were(tmp_path):
    append_result(tmp_path, {"protocol": "knn", "pooling": "cls", "metric": "top1", "value": 1.0})
    append_result(tmp_path, {"protocol": "knn", "pooling": "cls", "metric": "top1", "value": 2.0, "test_crop_fraction": 0.875})
    first, second = read_results(tmp_path)
    assert view_of(first) == (None, 1.0, "cls") and view_of(second) == (None, 0.875, "cls")
    assert str(view_of(second)) == "size not recorded, centre 0.875"
    assert mixed_sizes_note([first, second]) is None, "no two known sizes: nothing to warn about"


def test_evaluate_shows_every_long_phase_without_a_line_per_step(tiny_mae_run, fmnist_dir, tmp_path, capsys):
    ckpt = str(tiny_mae_run / "checkpoints" / "last.ckpt")
    assert main(["evaluate", "--checkpoint", ckpt, "--data-dir", str(fmnist_dir), "--output", str(tmp_path), "--protocol", "all",
                 "--raw-pixels", "--limit-test", "64", "--epochs", "2", "--seeds", "2",
                 "--lowshot-subsets", "10%"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    bars = set(re.findall(r"([a-z][\w ,.%/:]*?): +\d+%\|", err))
    final_probe = {b for b in bars if re.fullmatch(r"linear: lr [\d.]+ on every train feature", b)}
    assert bars - final_probe == {"train features", "test features", "knn", "linear: sweep of 5 lrs", "lowshot"} and final_probe, bars
    assert re.search(r"train features: +0%\|[^|]*\| 0/2 \[", err), "batches of 256 (the fixture's 512 train images: 2)"
    assert re.search(r"lowshot: +0%\|[^|]*\| 0/2 \[", err), "low-shot counts its trials: 1 subset x 2 seeds x 1 head"
    lines = err.split("\n")  # the bars redraw with \r; only the stage messages end lines
    assert "evaluate: reading the train split of fashion-mnist at 28 px" in lines[0] and "reading the test split" in lines[1]
    assert "clustering: k-means (k = 10, 10 restarts) of 64 features" in err
    assert len(lines) <= 4, lines


def test_library_calls_stay_quiet_and_stored_features_match_one_pass(tiny_mae_run, fmnist_dir, tmp_path, capsys):
    """The bars are the command's: a library call without `progress` prints nothing. Features of an
    in-memory split computed batch by batch under the bar are those of one pass."""
    from hybridssl.evaluation.data import features_and_labels
    from hybridssl.evaluation.knn import knn_accuracy
    from hybridssl.evaluation.linear import ProbeSettings, linear_probe_sweep
    from hybridssl.evaluation.run import stored_features

    req = EvalRequest(checkpoint=tiny_mae_run / "checkpoints" / "last.ckpt", dataset=None, protocol="knn", output=tmp_path,
                      data_dir=fmnist_dir, limit_train=70, limit_test=32)  # fmt: skip
    ctx = EvalContext(req)
    capsys.readouterr()
    whole = features_and_labels(ctx.encoder, ctx.train, ctx.info, ctx.pooling, torch.device("cpu"), batch_size=16)
    batched = stored_features(ctx.encoder, ctx.train, ctx.info, ctx.pooling, torch.device("cpu"), "f", batch_size=16)
    assert torch.equal(whole[0], batched[0]) and torch.equal(whole[1], batched[1]) and torch.equal(whole[2], batched[2])
    # a bar over 5 steps (70 images in batches of 16); how far it is drawn before it clears depends on
    # tqdm's refresh interval, so only its total is checked
    assert re.search(r"f: +\d+%.*\d/5 ", capsys.readouterr().err), "70 images in batches of 16: 5 steps"
    feats, labels = batched[0], batched[1]
    knn_accuracy(feats, labels, feats, labels, (5,))
    linear_probe_sweep(feats, labels, feats, labels, ProbeSettings(epochs=1), 0)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("split", ["test", "validation"])
def test_rows_of_a_cropped_view_say_so(tiny_mae_run, fmnist_dir, tmp_path, split):
    req = EvalRequest(checkpoint=tiny_mae_run / "checkpoints" / "last.ckpt", dataset=None, protocol="knn", output=tmp_path,
                      data_dir=fmnist_dir, limit_train=64, limit_test=32, ks=(5,), split=split, test_crop_fraction=0.875)  # fmt: skip
    (row,) = evaluate(req)
    assert (row["image_size"], row["test_crop_fraction"]) == (28, 0.875) and "28 px, centre 0.875" in describe(row)
