"""`hybridssl compare`: budget split, method selection, and two methods end to end on the fixture."""

import json
import math
from dataclasses import dataclass

import pytest

from hybridssl.cli import main
from hybridssl.compare import CompareRequest, budget_split, parse_methods, user_facing_methods
from hybridssl.methods import METHODS
from hybridssl.methods.base import Recipe


@dataclass(frozen=True)
class FakeStage:
    folder: str
    method: str
    epochs: int | None


class FakeRecipe(Recipe):
    """A two-stage recipe: MAE for the run's epochs, then a tuning stage of max(5, epochs / 10) epochs."""

    name = "fake-recipe"

    @classmethod
    def stages(cls, run):
        tune = None if run.epochs is None else max(5, math.ceil(run.epochs / 10))
        return [FakeStage("stage1-mae", "mae", run.epochs), FakeStage("stage2-tune", "fake-tune", tune)]


@pytest.fixture
def fake_recipe(monkeypatch):
    monkeypatch.setitem(METHODS, "fake-recipe", FakeRecipe)
    monkeypatch.setitem(METHODS, "fake-tune", METHODS["mae"])  # a stage that only runs after stage 1


def test_all_means_every_method_a_user_trains_on_its_own(fake_recipe):
    names = user_facing_methods()
    assert "mae" in names and "fake-recipe" in names and "fake-tune" not in names
    assert parse_methods("all") == names
    assert parse_methods("mae, fake-recipe,mae") == ["mae", "fake-recipe"]
    with pytest.raises(ValueError, match="methods: unknown 'nope'"):
        parse_methods("mae,nope")


def test_a_recipe_shares_the_epoch_budget_across_its_stages(fake_recipe, tmp_path):
    req = CompareRequest(methods=["fake-recipe"], output=tmp_path, budget_epochs=30)
    run, stages, note = budget_split(req, "fake-recipe")
    assert [(s["folder"], s["epochs"]) for s in stages] == [("stage1-mae", 25), ("stage2-tune", 5)] and note is None
    assert run.epochs == 25
    _, stages, note = budget_split(CompareRequest(methods=["fake-recipe"], output=tmp_path, budget_epochs=3), "fake-recipe")
    assert sum(s["epochs"] for s in stages) == 6 and "more than the budget of 3" in note
    run, stages, _ = budget_split(CompareRequest(methods=["mae"], output=tmp_path, budget_epochs=30), "mae")
    assert run.epochs == 30 and stages == [{"folder": ".", "method": "mae", "epochs": 30}]


def two_methods() -> list[str]:
    """mae (mean-patch pooling) and a CLS-pooled method when there is one, so the floors come at both poolings."""
    others = sorted((m for m in user_facing_methods() if m != "mae"), key=lambda m: m != "simclr")
    return ["mae", others[0]] if others else []


class Broken(METHODS["mae"]):
    """A method that cannot even be built: compare must record it and go on with the others."""

    name = "broken"

    def __init__(self, *args, **kwargs) -> None:
        raise ValueError("broken on purpose")


def test_compare_runs_end_to_end_resumes_and_survives_a_failing_method(fmnist_dir, tmp_path, capsys, monkeypatch):
    """One method, one protocol, a few steps: the wiring of the command (the slow test below does it all)."""
    monkeypatch.setitem(METHODS, "broken", Broken)
    out = tmp_path / "cmp"
    args = ["compare", "--methods", "mae,broken", "--data-dir", str(fmnist_dir), "--budget-epochs", "1", "--max-steps", "1",
            "--batch-size", "32", "--limit-train", "128", "--limit-test", "32", "--protocols", "knn", "--k", "5", "--no-floors",
            "--accelerator", "cpu", "--output", str(out)]  # fmt: skip
    assert main(args) == 1
    assert "1 of 2 methods failed (broken: ValueError: broken on purpose)" in capsys.readouterr().err
    doc = json.loads((out / "comparison.json").read_text())
    mae_row, broken_row = doc["tables"]["main"]["rows"]
    assert doc["tables"]["main"]["columns"] == ["method", "pooling", "image size", "test crop", "pretraining", "k-NN"], "only the protocols asked for"
    assert mae_row[:4] == ["mae", "mean_patch", "28 px", "whole"] and mae_row[5] != "–"
    assert broken_row[0] == "broken" and set(broken_row[1:]) == {"–"}
    assert doc["methods"]["mae"]["stages"] == [{"folder": ".", "method": "mae", "epochs": 1}]
    assert "--protocols knn" in doc["command"] and "broken did not complete" in (out / "comparison.md").read_text()
    assert (out / "comparison.html").is_file()
    assert main(args) == 1
    log = capsys.readouterr().out
    assert "mae: pretrained already" in log and "(trained)" not in log


@pytest.mark.slow
def test_compare_trains_and_evaluates_two_methods_and_resumes(fmnist_dir, tmp_path, capsys):
    methods = two_methods()
    out = tmp_path / "cmp"
    args = ["compare", "--methods", ",".join(methods), "--data-dir", str(fmnist_dir), "--budget-epochs", "1", "--max-steps", "2",
            "--batch-size", "32", "--limit-train", "128", "--limit-test", "32", "--eval-epochs", "1", "--seeds", "2",
            "--lowshot-subsets", "1%,2", "--eval-set", "finetune.batch_size=32", "--accelerator", "cpu", "--output", str(out)]  # fmt: skip
    assert main(args) == 0
    md = (out / "comparison.md").read_text()
    doc = json.loads((out / "comparison.json").read_text())
    page = (out / "comparison.html").read_text()
    main_table = doc["tables"]["main"]
    poolings = sorted({row[1] for row in main_table["rows"][: len(methods)]})
    floors = main_table["rows"][len(methods) :]
    assert [row[0] for row in floors] == ["random init (floor; mae's ViT)"] * len(poolings) + ["raw pixels (floor)"]
    assert [row[1] for row in floors] == [*poolings, "none"], "the untrained ViT at every pooling the methods use"
    assert main_table["columns"][5:] == ["k-NN", "linear", "fine-tune", "1% fine-tune", "1% linear", "cluster acc", "NMI"]
    for row in main_table["rows"][: len(methods)]:
        assert all(cell != "–" for cell in row), row  # every protocol measured for every method
    assert main_table["rows"][-1][7] == "–", "raw pixels cannot be fine-tuned"
    assert "hybridssl compare --methods" in md and f"| {methods[1]} |" in md and "Low-shot" in md
    for method in methods:
        record = doc["methods"][method]
        assert record["epochs"] == record["stages"][0]["epochs"] and record["results"]
        assert {r["protocol"] for r in record["results"]} == {"knn", "linear", "finetune", "lowshot", "clustering"}
        assert f"method {method}" in page
    assert page.count("data:image/png;base64") >= 2 and "<table>" in page and "against the floors" in page
    # a second run finds everything done: no training, no evaluation, the same tables
    mtime = (out / methods[0] / "checkpoints" / "last.ckpt").stat().st_mtime
    capsys.readouterr()
    assert main(args) == 0
    log = capsys.readouterr().out
    assert log.count("pretrained already") == 2 and "(trained)" not in log
    assert (out / methods[0] / "checkpoints" / "last.ckpt").stat().st_mtime == mtime
    assert json.loads((out / "comparison.json").read_text())["tables"] == doc["tables"]
    # other settings in the same folder are refused
    assert main([*args[:-2], "--seed", "1", "--output", str(out)]) == 2
    assert "other settings" in capsys.readouterr().err


def test_compare_needs_a_budget_and_known_protocols(tmp_path, capsys):
    assert main(["compare", "--methods", "mae", "--output", str(tmp_path)]) == 2
    assert main(["compare", "--methods", "mae", "--budget-epochs", "1", "--protocols", "knn,vibes", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "budget_epochs" in err[0] and "protocols: unknown 'vibes'" in err[1]


def test_validation_and_pooling_reach_the_evaluations_and_the_command(tmp_path, monkeypatch):
    """compare --validation measures on the train hold-out (never the test split) and its command, which
    guards the folder against other settings, says so."""
    import hybridssl.compare
    from hybridssl.cli import main

    seen = []
    monkeypatch.setattr(hybridssl.compare, "compare", lambda req: seen.append(req) or {})
    args = ["compare", "--methods", "mae", "--budget-epochs", "1", "--output", str(tmp_path)]
    assert main([*args, "--validation", "--pooling", "cls"]) == 0 and main(args) == 0
    assert seen[0].eval["split"] == "validation" and seen[0].eval["pooling"] == "cls"
    assert "--validation" in seen[0].command() and "--pooling cls" in seen[0].command()
    assert seen[1].eval["split"] == "test" and "--validation" not in seen[1].command() and "--pooling" not in seen[1].command()


def test_every_table_says_what_its_rows_were_measured_under_and_warns_when_sizes_mix(tmp_path):
    """A method measured at another image size than the floors (or an old row without a size) must not
    read as a better or worse encoder: the size is in every table, and the notes warn of the mix."""
    from hybridssl.evaluation.results import append_result
    from hybridssl.report.comparison import write_comparison

    def rows(folder: str, encoder: str, pooling: str, size: int | None, crop: float = 1.0) -> None:
        view = {} if size is None else {"image_size": size, "test_crop_fraction": crop}
        for protocol, extra in (("knn", {"settings": {"k": 20}}), ("lowshot", {"head": "linear", "subset": "1%", "std": 0.5, "settings": {}}),
                                ("clustering", {"metric": "nmi", "settings": {}})):  # fmt: skip
            append_result(tmp_path / folder, {"protocol": protocol, "encoder": encoder, "pooling": pooling, "metric": "top1",
                                              "value": 80.0, **view, **extra})  # fmt: skip

    rows("mae", "trained", "mean_patch", 112, 0.875)
    rows("floors", "random-init", "mean_patch", 224)
    rows("floors", "raw-pixels", "none", None)  # written before the size was recorded
    req = CompareRequest(methods=["mae"], output=tmp_path, budget_epochs=1, protocols=["knn", "lowshot", "clustering"])
    paths = write_comparison(req, {"mae": {"pretrain_seconds": 5.0}})
    doc = json.loads(paths["json"].read_text())
    for name in ("main", "lowshot", "clustering"):
        table = doc["tables"][name]
        assert table["columns"][1:4] == ["pooling", "image size", "test crop"], name
        assert [row[1:4] for row in table["rows"]] == [["mean_patch", "112 px", "centre 0.875"], ["mean_patch", "224 px", "whole"],
                                                       ["none", "size not recorded", "whole"]], name  # fmt: skip
    note = "different image sizes (112 px, 224 px, size not recorded)"
    assert any(note in line for line in doc["notes"]) and note in paths["md"].read_text() and note in paths["html"].read_text()
    (tmp_path / "floors" / "results.jsonl").unlink()
    rows("floors", "random-init", "mean_patch", 112)
    req.floors = True
    doc = json.loads(write_comparison(req, {"mae": {}})["json"].read_text())
    assert not any("different image sizes" in line for line in doc["notes"]), "one size: nothing to warn about"
