"""Every protocol through the public CLI on a tiny checkpoint; every row records protocol, pooling, settings."""

import json

import pytest

from hybridssl.cli import main
from hybridssl.methods import METHODS

SMALL = ["--limit-train", "200", "--limit-test", "64", "--epochs", "1"]
LOWSHOT = ["--seeds", "2", "--lowshot-subsets", "10%,2", "--set", "finetune.batch_size=32"]


def rows(folder):
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


@pytest.fixture
def evaluate(tiny_mae_run, fmnist_dir, tmp_path):
    def run(*args: str) -> int:
        ckpt = tiny_mae_run / "checkpoints" / "last.ckpt"
        return main(["evaluate", "--checkpoint", str(ckpt), "--data-dir", str(fmnist_dir), "--output", str(tmp_path), *SMALL, *args])

    return run


@pytest.mark.parametrize("protocol", ["knn", "linear", "finetune", "lowshot", "clustering"])
def test_each_protocol_runs_from_the_cli_and_records_its_settings(evaluate, tmp_path, protocol):
    assert evaluate("--protocol", protocol, *LOWSHOT) == 0
    written = rows(tmp_path)
    assert written and {r["protocol"] for r in written} == {protocol}
    for r in written:
        assert r["pooling"] == METHODS["mae"].eval_pooling and r["encoder"] == "trained" and r["train_size"] == 200 and r["test_size"] == 64
        assert isinstance(r["settings"], dict) and r["settings"] and "wall_seconds" in r
        assert "pixel" not in json.dumps(r) and "random" not in json.dumps(r).replace("random-resized", "")
    expected = {"knn": 3, "linear": 1, "finetune": 1, "lowshot": 4, "clustering": 4}[protocol]
    assert len(written) == expected
    if protocol in ("linear", "finetune"):
        assert written[0]["settings"]["epochs"] == 1
    if protocol == "finetune":  # the fine-tuned classifier is kept, for timm
        from tests.evaluation.test_classifier_export import timm_from

        model, metadata = timm_from(tmp_path / written[0]["settings"]["weights"])
        assert model.num_classes == 10 and len(json.loads(metadata["classes"])) == 10
    if protocol == "lowshot":
        assert {(r["head"], r["subset"]) for r in written} == {(h, s) for h in ("linear", "finetune") for s in ("10%", "2/class")}
        assert all(len(r["per_seed"]) == 2 and r["std"] >= 0 for r in written)
        assert {r["labelled"] for r in written if r["subset"] == "2/class"} == {20}


def test_all_protocols_of_the_raw_pixel_floor(evaluate, tmp_path):
    assert evaluate("--protocol", "all", "--raw-pixels", *LOWSHOT) == 0
    written = rows(tmp_path)
    assert [r["protocol"] for r in written] == ["knn"] * 3 + ["linear"] + ["lowshot"] * 2 + ["clustering"] * 4
    assert all(r["encoder"] == "raw-pixels" and r["pooling"] == "none" for r in written)
    assert {r["head"] for r in written if r["protocol"] == "lowshot"} == {"linear"}, "pixels have no encoder to tune"


def test_random_init_pooling_and_settings_flags(evaluate, tmp_path):
    assert evaluate("--protocol", "linear", "--random-init", "--pooling", "mean_patch", "--lrs", "0.1,1") == 0
    (r,) = rows(tmp_path)
    assert r["encoder"] == "random-init" and r["pooling"] == "mean_patch"
    assert r["settings"]["base_lrs"] == [0.1, 1.0] and set(r["settings"]["holdout_top1"]) == {"0.1", "1"}


def test_invalid_settings_fail_before_work_naming_the_field(evaluate, capsys):
    assert evaluate("--protocol", "finetune", "--set", "finetune.layer_decay=2") == 2
    assert evaluate("--protocol", "finetune", "--set", "finetune.nope=1") == 2
    assert evaluate("--protocol", "finetune", "--raw-pixels") == 2
    assert evaluate("--protocol", "lowshot", "--lowshot-subsets", "3%,many") == 2
    assert evaluate("--protocol", "everything") == 2
    assert evaluate("--protocol", "finetune", "--set", "finetune.rand_augment=rand-q9") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 6 and all(line.startswith("hybridssl: error:") for line in err)
    assert "finetune.layer_decay" in err[0] and "finetune.nope" in err[1] and "raw pixels" in err[2]
    assert "lowshot.subsets" in err[3] and "all" in err[4]
    assert "finetune.rand_augment" in err[5] and "rand-m9-mstd0.5-inc1" in err[5]


def test_validation_measures_on_a_train_holdout_and_never_reads_the_test_split(evaluate, tmp_path, monkeypatch):
    import hybridssl.evaluation.run as run

    read = []
    real = run.eval_split
    monkeypatch.setattr(run, "eval_split", lambda dataset, split, *a, **k: read.append(split) or real(dataset, split, *a, **k))
    seen = []
    real_knn = run.knn_accuracy
    monkeypatch.setattr(run, "knn_accuracy", lambda tr, trl, te, tel, *a, **k: seen.append((tr, te)) or real_knn(tr, trl, te, tel, *a, **k))
    assert evaluate("--protocol", "knn", "--validation") == 0
    assert read == ["train"]
    (r, *_) = rows(tmp_path)
    assert r["split"].startswith("validation") and r["train_size"] + r["test_size"] == 200
    assert 18 <= r["test_size"] <= 22, "10% of each class (rounded per class)"
    train, held = seen[0]
    assert not (train.unsqueeze(1) == held.unsqueeze(0)).all(-1).any(), "no held-out image is among the train features"


def test_a_killed_finetune_evaluation_resumes_from_its_output_folder(evaluate, tmp_path, monkeypatch, capsys):
    from hybridssl.evaluation.finetune import Progress

    original = Progress.save

    def killed(self, state):
        original(self, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(Progress, "save", killed)
    assert evaluate("--protocol", "finetune", "--epochs", "2") == 130
    assert "run the same command again" in capsys.readouterr().err
    saved = list((tmp_path / "finetune-progress").glob("*.pt"))
    assert len(saved) == 1 and not (tmp_path / "results.jsonl").exists()
    monkeypatch.setattr(Progress, "save", original)
    assert evaluate("--protocol", "finetune", "--epochs", "2") == 0
    assert "resuming after epoch 1 of 2" in capsys.readouterr().err
    (row,) = rows(tmp_path)
    assert row["protocol"] == "finetune" and row["resumed_after_epoch"] == 1 and row["finetune_seconds"] > 0
    assert not saved[0].exists(), "the state goes once the row is written"
    # other settings are another fine-tune: it starts from the beginning
    assert evaluate("--protocol", "finetune", "--epochs", "2") == 0 and len(rows(tmp_path)) == 1, "measured: kept"
    monkeypatch.setattr(Progress, "save", killed)
    assert evaluate("--protocol", "finetune", "--epochs", "2", "--again") == 130
    monkeypatch.setattr(Progress, "save", original)
    assert evaluate("--protocol", "finetune", "--epochs", "2", "--set", "finetune.layer_decay=0.5") == 0
    assert "resuming" not in capsys.readouterr().err and "resumed_after_epoch" not in rows(tmp_path)[-1]
    # the papers' regularisers are settings like any other: recorded, and part of what was measured
    paper = ["--set", "finetune.rand_augment=rand-m9-mstd0.5-inc1", "--set", "finetune.random_erasing=0.25",
             "--set", "finetune.mixup=0.8", "--set", "finetune.cutmix=1.0"]  # fmt: skip
    assert evaluate("--protocol", "finetune", "--epochs", "2", *paper) == 0
    record = rows(tmp_path)[-1]["settings"]
    assert (record["rand_augment"], record["random_erasing"], record["mixup"], record["cutmix"]) == ("rand-m9-mstd0.5-inc1", 0.25, 0.8, 1.0)
    assert "RandAugment" in record["augmentation"] and "mixup alpha 0.8 or cutmix alpha 1" in record["augmentation"]
    assert len({r["measurement"] for r in rows(tmp_path)}) == len(rows(tmp_path))


def test_a_rerun_measures_only_what_results_do_not_hold(evaluate, tmp_path, capsys, monkeypatch):
    import hybridssl.evaluation.run as run

    assert evaluate("--protocol", "knn") == 0
    first = rows(tmp_path)
    assert len(first) == 3 and len({r["measurement"] for r in first}) == 1
    capsys.readouterr()
    calls = []
    real_knn, real_linear = run.RUNNERS["knn"], run.RUNNERS["linear"]
    monkeypatch.setitem(run.RUNNERS, "knn", lambda ctx, s: calls.append("knn") or real_knn(ctx, s))
    monkeypatch.setitem(run.RUNNERS, "linear", lambda ctx, s: calls.append("linear") or real_linear(ctx, s))
    assert evaluate("--protocol", "all", "--raw-pixels") == 0 and calls.count("knn") == 1  # another encoder kind
    calls.clear()
    capsys.readouterr()
    # knn is kept (its rows printed again, not appended); linear, new, is measured
    assert evaluate("--protocol", "knn") == 0 and evaluate("--protocol", "linear") == 0
    assert calls == ["linear"]
    out, err = capsys.readouterr()
    assert "knn: already measured" in err and out.count("knn ") == 3
    mine = [r for r in rows(tmp_path) if r["encoder"] == "trained"]
    assert [r["protocol"] for r in mine] == ["knn"] * 3 + ["linear"]
    # another setting, another seed, --again, or a rewritten checkpoint: measured again
    assert evaluate("--protocol", "knn", "--k", "5") == 0 and calls == ["linear", "knn"]
    assert evaluate("--protocol", "knn", "--seed", "1") == 0 and calls.count("knn") == 2
    assert evaluate("--protocol", "knn", "--again") == 0 and calls.count("knn") == 3
    assert len({r["measurement"] for r in rows(tmp_path) if r["protocol"] == "knn" and r["encoder"] == "trained"}) == 3


def test_the_measurement_key_follows_the_checkpoint_file(tiny_mae_run, fmnist_dir, tmp_path):
    import os

    from hybridssl.evaluation.run import EvalContext, EvalRequest, resolve_settings

    ckpt = tmp_path / "copy.ckpt"
    ckpt.write_bytes((tiny_mae_run / "checkpoints" / "last.ckpt").read_bytes())
    req = EvalRequest(checkpoint=ckpt, dataset=None, protocol="knn", output=tmp_path, data_dir=fmnist_dir, limit_train=64, limit_test=32)
    settings = resolve_settings(req, ["knn", "lowshot"])
    key = EvalContext(req).measurement("knn", settings)
    assert EvalContext(req).measurement("knn", settings) == key
    assert EvalContext(req).measurement("lowshot", settings) != key
    os.utime(ckpt, ns=(0, 10**18))  # retrained in place: another file
    assert EvalContext(req).measurement("knn", settings) != key


def test_the_key_holds_the_encoder_kind_and_lowshot_its_heads_settings(evaluate, tmp_path, capsys, monkeypatch):
    import hybridssl.evaluation.run as run

    calls = []
    for name in ("knn", "lowshot"):
        real = run.RUNNERS[name]
        monkeypatch.setitem(run.RUNNERS, name, lambda ctx, s, real=real, name=name: calls.append(name) or real(ctx, s))
    same_pooling = ["--pooling", "mean_patch"]
    assert evaluate("--protocol", "knn", *same_pooling) == 0 and evaluate("--protocol", "knn", "--random-init", *same_pooling) == 0
    assert calls == ["knn", "knn"], "the untrained twin at the same pooling is another measurement"
    linear_only = ["--set", "lowshot.heads=[linear]", "--lowshot-subsets", "10%,2", "--seeds", "2"]
    assert evaluate("--protocol", "lowshot", *linear_only) == 0
    capsys.readouterr()
    assert evaluate("--protocol", "lowshot", *linear_only) == 0 and calls.count("lowshot") == 1
    out = capsys.readouterr().out
    assert out.count("lowshot") == 2 and "10%" in out and "2/class" in out, "every kept row comes back, one per subset"
    assert evaluate("--protocol", "lowshot", *linear_only, "--set", "finetune.layer_decay=0.5") == 0
    assert calls.count("lowshot") == 2, "low-shot's key holds the fine-tune settings its heads use"


def test_a_protocol_cut_between_its_rows_or_a_torn_line_is_not_measured(evaluate, tmp_path, monkeypatch):
    import hybridssl.evaluation.run as run

    assert evaluate("--protocol", "knn") == 0
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    (tmp_path / "results.jsonl").write_text("\n".join(lines[:2]) + '\n{"protocol": "kn\n')  # killed while writing row 3
    calls = []
    real = run.RUNNERS["knn"]
    monkeypatch.setitem(run.RUNNERS, "knn", lambda ctx, s: calls.append("knn") or real(ctx, s))
    with pytest.warns(UserWarning, match="torn line"):
        assert evaluate("--protocol", "knn") == 0
    assert calls == ["knn"]


def test_a_row_appended_after_a_torn_line_starts_a_line_of_its_own(tmp_path):
    """A kill mid-write leaves a last line without its newline; the next row must not be glued to it."""
    from hybridssl.evaluation.results import append_result, read_results

    append_result(tmp_path, {"metric": "top1", "value": 1.0})
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write('{"metric": "to')  # killed while writing
    append_result(tmp_path, {"metric": "top1", "value": 2.0})
    with pytest.warns(UserWarning, match=r"results.jsonl:2: .*torn line"):
        rows = read_results(tmp_path)
    assert [r["value"] for r in rows] == [1.0, 2.0]


def test_an_unlabelled_val_folder_is_named_with_the_way_out(tmp_path):
    """ImageNet's val/ as downloaded is flat: the error names the folder and the file-list way out."""
    from hybridssl.data.sources import DataInfo
    from hybridssl.data.synthetic import write_photo_folder
    from hybridssl.errors import DataError
    from hybridssl.evaluation.data import eval_split

    write_photo_folder(tmp_path / "val", 4, layout="flat", sizes=(40, 48))
    info = DataInfo("folder", 32, 3, (0.5,) * 3, (0.25,) * 3, 4, 4)
    with pytest.raises(DataError, match=r"test split of folder \(.*val\) has no labels.*class subfolders.*--eval-data-dir a file list"):
        eval_split("folder", "test", None, tmp_path / "val", info)
