"""benchmarks/flagship_table.py's training time: every start of a resumed row counts, even one a
killed session cut off before its next log stamp."""

from torch.utils.tensorboard import SummaryWriter

from benchmarks.flagship_table import training_minutes


def test_training_minutes_sum_each_start_of_every_stage(tmp_path):
    row = tmp_path / "rows" / "mae-ct"
    for folder, walltimes in [("stage2-head/logs/tensorboard", (100, 400)), ("stage3-tune/logs/tensorboard", (1000, 1300, 1600)),
                              ("stage3-tune/logs/tensorboard", (5000, 5900)), ("stage3-tune/logs/tensorboard", (9000,))]:  # fmt: skip
        with SummaryWriter(row / folder, filename_suffix=f".{walltimes[0]}") as writer:
            for step, walltime in enumerate(walltimes):
                writer.add_scalar("train/loss", 1.0, step, walltime=walltime)
    assert training_minutes(row) == ((300 + 600 + 900) / 60, 3), "a start with one value trained nothing measurable"
    assert training_minutes(tmp_path / "rows" / "missing") == (0.0, 0)
