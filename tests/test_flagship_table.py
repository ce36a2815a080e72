"""benchmarks/archive/flagship_table.py's training time: every start of a resumed row counts, even one a
killed session cut off before its next log stamp."""

import json
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from benchmarks.archive.flagship_table import training_minutes


def test_training_minutes_sum_each_start_of_every_stage(tmp_path):
    row = tmp_path / "rows" / "mae-ct"
    for folder, walltimes in [("stage2-head/logs/tensorboard", (100, 400)), ("stage3-tune/logs/tensorboard", (1000, 1300, 1600)),
                              ("stage3-tune/logs/tensorboard", (5000, 5900)), ("stage3-tune/logs/tensorboard", (9000,))]:  # fmt: skip
        with SummaryWriter(row / folder, filename_suffix=f".{walltimes[0]}") as writer:
            for step, walltime in enumerate(walltimes):
                writer.add_scalar("train/loss", 1.0, step, walltime=walltime)
    assert training_minutes(row) == ((300 + 600 + 900) / 60, 3), "a start with one value trained nothing measurable"
    assert training_minutes(tmp_path / "rows" / "missing") == (0.0, 0)


def test_kept_records_give_the_same_table_without_the_run_folders(tmp_path, monkeypatch, capsys):
    """benchmarks/archive/keep_records.py: the table and training times drawn from the kept copy equal the
    originals', with the checkpoints and event files left behind."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks" / "archive"))
    from benchmarks.archive.flagship_table import main
    from keep_records import keep

    out, kept = tmp_path / "out", tmp_path / "kept"
    row = out / "rows" / "cmae-b128"  # a row named apart from its method
    with SummaryWriter(row / "logs" / "tensorboard") as writer:
        for step, walltime in enumerate((100, 700)):
            writer.add_scalar("train/loss", 1.0, step, walltime=walltime)
    (row / "checkpoints").mkdir()
    (row / "checkpoints" / "last.ckpt").write_bytes(b"large")
    (row / "log.txt").write_text("[2026-12-03T00:00:00Z] cmae 24 epochs\n[2026-12-03T02:00:00Z] evaluate knn\n")
    record = {"encoder": "trained", "protocol": "knn", "value": 83.25, "pooling": "cls", "settings": {"k": 20}}
    (row / "results.jsonl").write_text(json.dumps(record) + "\n")
    (row / "config.yaml").write_text("method: cmae\nepochs: 24\nbatch_size: 128\noptim:\n  base_lr: 0.00045\nmethod_args:\n  temperature: 0.07\n")
    stages = out / "rows" / "mae-ct-head5"  # stages 2-3 on rows/mae, which only links a checkpoint
    stages.mkdir(parents=True)
    (stages / "results.jsonl").write_text(json.dumps({**record, "value": 84.5}) + "\n")
    (stages / "config.yaml").write_text("method: mae-ct-aug\nepochs: 100\ninit_from: /runs/rows/mae/checkpoints/last.ckpt\n"
                                        "method_args:\n  head_epochs: 1\n  tune_epochs: 8\n")
    (out / "logs").mkdir()  # a fine-tune benchmarks/archive/results_gpu.py ran beside the rows
    (out / "logs" / "finetune-mae.stamps").write_text("[2026-12-03T03:00:00Z] evaluate finetune --epochs 15 (x)\n"
                                                      "[2026-12-03T03:12:30Z] finetune mae done\n")
    linked = out / "rows" / "mae"
    (linked / "checkpoints").mkdir(parents=True)
    (linked / "results.jsonl").write_text(json.dumps({**record, "value": 80.29}) + "\n")

    assert keep(out, kept) == [kept / "rows" / name for name in ("cmae-b128", "mae", "mae-ct-head5")]
    assert sorted(p.name for p in (kept / "rows" / "cmae-b128").iterdir()) == ["config.yaml", "log.txt", "results.jsonl", "training.json"]
    assert training_minutes(kept / "rows" / "cmae-b128") == training_minutes(row) == (10.0, 1)
    main(out)
    original = capsys.readouterr().out
    main(kept)
    assert capsys.readouterr().out == original
    assert "- evaluate finetune --epochs 15 (x): 12.5 min" in original, "the parallel fine-tune's time is listed"
    assert "| 83.25 |" in original and "cmae-b128: 10.0 min of training over 1 start" in original
    assert "| cmae-b128 (cmae, 24 epochs, batch 128, base lr 0.00045) | cls | 83.25 |" in original, "the row names its recipe"
    assert "| mae-ct-head5 (mae-ct-aug: head 1 epoch + tune 8 epochs on rows/mae) | cls | 84.50 |" in original
    assert "| mae (linked checkpoint) | cls | 80.29 |" in original


def test_kept_records_grow_across_machines(tmp_path, monkeypatch):
    """A row's folder on a new machine starts empty: keeping it again adds its measurements and stamps to
    those an earlier machine kept, and a measurement taken again is the one the table reads."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks" / "archive"))
    from benchmarks.archive.flagship_table import pick
    from hybridssl.evaluation.results import read_results
    from keep_records import keep

    record = {"encoder": "trained", "protocol": "knn", "value": 81.0, "pooling": "cls", "settings": {"k": 20}}
    first, second, kept = tmp_path / "machine1", tmp_path / "machine2", tmp_path / "kept"
    for out, records, stamp in [(first, [record, {**record, "protocol": "linear", "value": 84.0}], "[2026-12-03T01:00:00Z] mae 24 epochs\n"),
                                (second, [{**record, "value": 82.0}, {**record, "protocol": "finetune", "value": 90.0}], "[2026-12-04T01:00:00Z] evaluate finetune\n")]:  # fmt: skip
        row = out / "rows" / "mae"
        row.mkdir(parents=True)
        (row / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (out / "log.txt").write_text("[2026-12-0xT00:00:00Z] session start\n" + stamp)
        keep(out, kept)
        keep(out, kept)  # keeping twice adds nothing
    results = read_results(kept / "rows" / "mae" / "results.jsonl")
    assert len(results) == 4
    assert [pick(results, "trained", p) for p in ("knn", "linear", "finetune")] == ["82.00", "84.00", "90.00"]
    assert (kept / "log.txt").read_text() == ("[2026-12-0xT00:00:00Z] session start\n[2026-12-03T01:00:00Z] mae 24 epochs\n"
                                              "[2026-12-04T01:00:00Z] evaluate finetune\n")  # fmt: skip
