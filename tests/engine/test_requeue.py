"""SLURM's warning signal (`--signal=SIGUSR1@N --requeue`): the run ends the optimizer step it is in,
writes a normal step checkpoint, stops, requeues its job (a fake `scontrol` here), and `--resume` from
there ends bit for bit where an uninterrupted run ends. Lightning's own handler, which saves mid-step into
an hpc_ckpt file that --resume does not read, stays off."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hybridssl.cli import main
from hybridssl.weights.ours import load_checkpoint
from hybridssl.engine.module import PretrainModule
from hybridssl.errors import RunRequeued
from hybridssl.report.curves import read_metrics
from hybridssl.slurm import WARNING, under_slurm
from tests.subprocess_runs import signalling_step, start_driver, threads
from tests.test_multinode import free_port
from tests.test_resume_kill import assert_same, assert_same_training_state, tiny

# 64 images, batch 16, two batches per step: 2 steps per epoch; a periodic checkpoint every 4 steps
BUDGET = ["--max-steps", "6", "--accumulate-grad-batches", "2", "--checkpoint-every-steps", "4"]
SLURM_TASK = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "pretrain", "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0",
              "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}  # fmt: skip


@pytest.fixture(autouse=True)
def _same_threads_and_no_warning_left() -> Iterator[None]:
    """A warning noted but not acted on (the last step's) stays noted for the command, not the test run."""
    with threads():
        yield
    WARNING.received = WARNING.listening = False
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)


@pytest.fixture(scope="module")
def reference(fmnist_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    with threads():
        assert main(tiny("mae", fmnist_dir, out, *BUDGET)) == 0
    return out


def fake_scontrol(folder: Path, status: int = 0) -> Path:
    """An `scontrol` that logs its arguments; returns the log."""
    folder.mkdir(exist_ok=True)
    log = folder / "scontrol.log"
    script = folder / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {log}\necho "refused" >&2\nexit {status}\n' if status else f'#!/bin/sh\necho "$@" >> {log}\n')
    script.chmod(0o755)
    return log


@pytest.fixture
def slurm_job(tmp_path, monkeypatch) -> Iterator[Path]:
    for name, value in SLURM_TASK.items():
        monkeypatch.setenv(name, value)
    log = fake_scontrol(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    yield log


def signal_at(monkeypatch, step: int) -> None:
    """SIGUSR1 as step `step` starts (its first accumulated batch), as SLURM sends it: any moment."""
    monkeypatch.setattr(PretrainModule, "training_step", signalling_step(PretrainModule.training_step, step))


@pytest.mark.parametrize("step", [3, 4], ids=["between-checkpoints", "at-a-periodic-checkpoint"])
def test_warning_signal_checkpoints_the_step_requeues_and_resumes_bit_identical(
    step, reference, fmnist_dir, tmp_path, slurm_job, monkeypatch, capsys
):
    out = tmp_path / "run"
    signal_at(monkeypatch, step)
    assert main(tiny("mae", fmnist_dir, out, *BUDGET)) == 0
    assert slurm_job.read_text().split() == ["requeue", "4242"]
    assert f"stopped after step {step}" in capsys.readouterr().err
    # the step's own checkpoint (written once: no "-v1" copy beside the periodic one), no last.ckpt, no hpc_ckpt
    written = sorted(p.name for p in out.rglob("*.ckpt"))
    assert written == [f"step{step:07d}.ckpt"], written
    assert load_checkpoint(out / "checkpoints" / written[0], mmap=True)["hybridssl"]["finished"] is False
    # the checkpoint is the reference run's state after the same step (the accumulation finished)
    monkeypatch.undo()  # no signal, no SLURM: the requeued job
    with threads():
        assert main(tiny("mae", fmnist_dir, out, *BUDGET, "--resume")) == 0
    assert_same_training_state(reference / "checkpoints" / "last.ckpt", out / "checkpoints" / "last.ckpt")


def test_the_stop_checkpoint_is_pruned_like_the_periodic_ones(fmnist_dir, tmp_path, slurm_job, monkeypatch):
    out = tmp_path / "run"
    signal_at(monkeypatch, 3)
    assert main(tiny("mae", fmnist_dir, out, *BUDGET, "--keep-checkpoints", "1")) == 0
    monkeypatch.undo()
    with threads():
        assert main(tiny("mae", fmnist_dir, out, *BUDGET, "--keep-checkpoints", "1", "--resume")) == 0
    assert sorted(p.name for p in out.rglob("*.ckpt")) == ["last.ckpt", "step0000004.ckpt"]


@pytest.mark.parametrize(("step", "measured"), [(3, [2]), (4, [2, 4])], ids=["mid-epoch", "at-an-epoch-end"])
def test_the_knn_monitor_skips_only_an_epoch_the_stop_cut_short(step, measured, fmnist_dir, tmp_path, slurm_job, monkeypatch):
    out = tmp_path / "run"
    signal_at(monkeypatch, step)  # 2 steps per epoch: step 3 is in the middle of the second epoch, step 4 ends it
    assert main(tiny("mae", fmnist_dir, out, *BUDGET, "--set", "knn_monitor_every_epochs=1")) == 0
    assert [s for s, _ in read_metrics(out)["monitor/knn_top1"]] == measured


def test_a_warning_after_a_stage_stops_before_the_next_one(fmnist_dir, tmp_path, slurm_job, monkeypatch, capsys):
    """The warning comes in stage 1's last step (nothing left to checkpoint there): MAE-CT's stage 2
    does not start, the job is requeued, and its --resume goes on with stage 2."""
    out = tmp_path / "run"
    signal_at(monkeypatch, 2)
    args = ["pretrain", "--method", "mae-ct", "--model", "vit-pico", "--batch-size", "16", "--limit-train", "64",
            "--accelerator", "cpu", "--no-progress-bar", "--data-dir", str(fmnist_dir), "--max-steps", "2", "--output", str(out)]  # fmt: skip
    assert main(args) == 0
    assert "stopped before training" in capsys.readouterr().err and slurm_job.read_text().split() == ["requeue", "4242"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["stage1-mae"]
    monkeypatch.undo()
    assert main([*args, "--resume"]) == 0
    assert (out / "stage3-tune" / "checkpoints" / "last.ckpt").is_file()


def test_torchrun_inside_a_slurm_job_is_left_to_torchrun(slurm_job, monkeypatch):
    assert under_slurm()
    for name, value in {"TORCHELASTIC_RUN_ID": "none", "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    assert not under_slurm()  # Lightning takes the ranks from torchrun's variables: no SLURM environment, no requeue


def test_a_refused_requeue_says_to_resume_and_keeps_the_checkpoint(fmnist_dir, tmp_path, slurm_job, monkeypatch, capsys):
    fake_scontrol(tmp_path / "bin", status=1)
    signal_at(monkeypatch, 2)
    out = tmp_path / "run"
    assert main(tiny("mae", fmnist_dir, out, *BUDGET)) == 1
    err = capsys.readouterr().err
    assert "could not be requeued; resume with --resume" in err
    assert sorted(p.name for p in out.rglob("*.ckpt")) == ["step0000002.ckpt"]


def test_the_signal_on_the_last_step_finishes_the_run(reference, fmnist_dir, tmp_path, slurm_job, monkeypatch):
    signal_at(monkeypatch, 6)
    out = tmp_path / "run"
    assert main(tiny("mae", fmnist_dir, out, *BUDGET)) == 0
    assert not slurm_job.exists()  # nothing left to requeue
    assert WARNING.received  # noted: a next stage of the command would not start
    assert_same_training_state(reference / "checkpoints" / "last.ckpt", out / "checkpoints" / "last.ckpt")


@pytest.mark.slow
@pytest.mark.ddp
def test_ranks_signalled_at_different_steps_stop_together(fmnist_dir, tmp_path):
    """Two SLURM tasks (one per "node", gloo) and only rank 1 gets the signal: both ranks stop after the
    same step, the checkpoint is written once and one rank requeues."""
    log = fake_scontrol(tmp_path / "bin")
    out = tmp_path / "run"
    port = str(free_port())
    args = [*tiny("mae", fmnist_dir, out, *BUDGET), "--devices", "1", "--num-nodes", "2"]
    bin_first = f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"

    def task(rank: int) -> dict[str, str]:
        signalled = {"HYBRIDSSL_TEST_SIGNAL_AT": "3"} if rank == 1 else {}
        return {**SLURM_TASK, "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": str(rank),
                "SLURM_NODEID": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "PATH": bin_first, **signalled}  # fmt: skip

    ranks = [start_driver(args, **task(rank)) for rank in (0, 1)]
    try:
        for rank in ranks:
            text, _ = rank.communicate(timeout=300)  # ranks stopping at different steps wait for each other forever
            assert rank.returncode == 0, text.decode(errors="replace")[-3000:]
    finally:
        for rank in ranks:
            if rank.poll() is None:
                os.killpg(rank.pid, signal.SIGKILL)
                rank.wait()
    assert log.read_text().split() == ["requeue", "4242"]
    assert sorted(p.name for p in out.rglob("*.ckpt")) == ["step0000003.ckpt"]


EVALUATE = ["--limit-train", "96", "--limit-test", "32", "--set", "finetune.batch_size=32"]


def signal_in_first_call(monkeypatch, owner, name: str) -> None:
    """`owner.name` sends SIGUSR1 (SLURM's warning) as its first call starts, then works as before."""
    original, sent = getattr(owner, name), []

    def signalling(*args, **kwargs):
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGUSR1)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, signalling)


def test_a_finetune_stops_after_the_epoch_it_is_in_and_its_requeued_command_ends_as_an_uninterrupted_one(
    tiny_mae_run, fmnist_dir, tmp_path, slurm_job, monkeypatch, capsys
):
    from hybridssl.evaluation.finetune import BatchRegularizers
    from hybridssl.evaluation.results import read_results

    def evaluate(out: Path) -> int:
        return main(["evaluate", "--checkpoint", str(tiny_mae_run / "checkpoints" / "last.ckpt"), "--data-dir", str(fmnist_dir),
                     "--output", str(out), "--protocol", "finetune", "--epochs", "3", *EVALUATE])  # fmt: skip

    signal_in_first_call(monkeypatch, BatchRegularizers, "__call__")  # the warning comes in epoch 1's first batch
    assert evaluate(tmp_path / "requeued") == 0
    err = capsys.readouterr().err
    assert "stopped before fine-tune epoch 2 of 3" in err and "job 4242 requeued: it continues from there" in err
    assert "--resume" not in err, "evaluate continues without it"
    assert slurm_job.read_text().split() == ["requeue", "4242"]
    (progress,) = (tmp_path / "requeued" / "finetune-progress").glob("*.pt")
    assert torch.load(progress, weights_only=True)["epochs_done"] == 1
    assert not (tmp_path / "requeued" / "results.jsonl").exists()
    monkeypatch.undo()  # the requeued job: no signal, no SLURM
    assert evaluate(tmp_path / "requeued") == 0
    assert "resuming after epoch 1 of 3" in capsys.readouterr().err
    assert evaluate(tmp_path / "whole") == 0
    (resumed,), (whole,) = read_results(tmp_path / "requeued"), read_results(tmp_path / "whole")
    assert resumed["resumed_after_epoch"] == 1 and resumed["value"] == whole["value"]
    (requeued_weights,), (whole_weights,) = ((tmp_path / run / "finetuned").glob("*.safetensors") for run in ("requeued", "whole"))
    assert_same(load_file(requeued_weights), load_file(whole_weights))  # the fine-tuned classifier, bit for bit


def test_a_warning_during_one_protocol_stops_before_the_next_and_keeps_its_result(tiny_mae_run, fmnist_dir, tmp_path, slurm_job, monkeypatch):
    from hybridssl.evaluation import run
    from hybridssl.evaluation.results import read_results

    request = run.EvalRequest(checkpoint=tiny_mae_run / "checkpoints" / "last.ckpt", dataset="fashion-mnist", protocol="knn",
                              output=tmp_path, data_dir=fmnist_dir, limit_train=96, limit_test=32)  # fmt: skip
    signal_in_first_call(monkeypatch, run, "knn_accuracy")
    with pytest.raises(RunRequeued, match="stopped before the linear protocol") as stopped:
        run.evaluate(request, ["knn", "linear"])
    assert stopped.value.requeued and slurm_job.read_text().split() == ["requeue", "4242"]
    knn_rows = read_results(tmp_path)
    assert knn_rows and {r["protocol"] for r in knn_rows} == {"knn"}
    monkeypatch.undo()
    run.evaluate(request, ["knn", "linear"])
    again = read_results(tmp_path)
    assert again[: len(knn_rows)] == knn_rows and {r["protocol"] for r in again[len(knn_rows):]} == {"linear"}, "k-NN kept, not measured again"
    assert {r["protocol"] for r in read_results(tmp_path)} == {"knn", "linear"}


def test_between_protocols_one_of_several_processes_never_leaves_alone(slurm_job, monkeypatch):
    from hybridssl import slurm

    WARNING.received = True
    monkeypatch.setattr(slurm, "world_size", lambda: 2)  # a fine-tune's process group: the epoch's end decides
    slurm.requeue_if_warned("the finetune protocol")
    assert WARNING.received and not slurm_job.exists()
    monkeypatch.setattr(slurm, "world_size", lambda: 1)
    with pytest.raises(RunRequeued, match="stopped before the finetune protocol"):
        slurm.requeue_if_warned("the finetune protocol")


# ----------------------------------------------------------------------------- SIGTERM and Ctrl+C


class UnhandledSigterm(Exception):
    """What a SIGTERM the run did not handle raises here (by default it would end the test process)."""


@pytest.fixture
def sigterm_fails_the_test() -> Iterator[None]:
    def unhandled(signum, frame):
        raise UnhandledSigterm("SIGTERM reached the test's own handler: the run did not handle it")

    before = signal.signal(signal.SIGTERM, unhandled)
    yield
    assert signal.getsignal(signal.SIGTERM) is unhandled, "the run put its SIGTERM handler back"
    signal.signal(signal.SIGTERM, before)


def send_at(monkeypatch, step: int, signum: int) -> None:
    """`signum` to this process as step `step` starts (its first accumulated batch): any moment of a step."""
    original, sent = PretrainModule.training_step, []

    def sending(self, batch, batch_idx):
        if self.global_step + 1 == step and not sent:
            sent.append(True)
            os.kill(os.getpid(), signum)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(PretrainModule, "training_step", sending)


def test_sigterm_checkpoints_the_step_it_arrives_in_exits_143_and_resumes_bit_identical(
    reference, fmnist_dir, tmp_path, sigterm_fails_the_test, monkeypatch, capsys
):
    """No SLURM (Kubernetes, preemption, a plain `kill`): SIGTERM in the middle of step 3's accumulation
    finishes the step, writes its checkpoint (Lightning's handler ended the loop at the next batch, exit
    0, no checkpoint), exits with 143 and a resume hint; the resume ends as an uninterrupted run."""
    out = tmp_path / "run"
    send_at(monkeypatch, 3, signal.SIGTERM)
    assert main(tiny("mae", fmnist_dir, out, *BUDGET)) == 143
    err = capsys.readouterr().err
    stopped = out / "checkpoints" / "step0000003.ckpt"
    assert f"hybridssl: SIGTERM: stopped after step 3, checkpoint {stopped}; resume with --resume" in err, err
    assert sorted(p.name for p in out.rglob("*.ckpt")) == ["step0000003.ckpt"]
    assert load_checkpoint(stopped, mmap=True)["global_step"] == 3
    monkeypatch.undo()
    assert main(tiny("mae", fmnist_dir, out, *BUDGET, "--resume")) == 0
    assert_same_training_state(reference / "checkpoints" / "last.ckpt", out / "checkpoints" / "last.ckpt")


def test_sigterm_outside_the_training_steps_stops_at_once(fmnist_dir, tmp_path, sigterm_fails_the_test, monkeypatch, capsys):
    from hybridssl.engine import stages

    loading = stages.load_training_data

    def terminated_while_loading(config):
        os.kill(os.getpid(), signal.SIGTERM)
        return loading(config)

    monkeypatch.setattr(stages, "load_training_data", terminated_while_loading)
    assert main(tiny("mae", fmnist_dir, tmp_path, *BUDGET)) == 143
    assert capsys.readouterr().err.splitlines() == [
        "hybridssl: SIGTERM: stopped outside the training steps; no checkpoint had been written; resume with --resume"
    ]


@pytest.mark.parametrize("when", ["in-a-step", "while-the-trainer-sets-up"])
def test_ctrl_c_says_interrupted_exits_130_and_works_again(when, fmnist_dir, tmp_path, monkeypatch, capsys):
    """Lightning catches the KeyboardInterrupt, ignores SIGINT from then on and calls sys.exit(1): the
    command ended silently with 1. Before its signal handlers are set up (the optimizers) nothing of
    Lightning's put SIGINT back: a second Ctrl+C did nothing."""
    before = signal.getsignal(signal.SIGINT)
    if when == "in-a-step":
        send_at(monkeypatch, 2, signal.SIGINT)
    else:
        optimizers = PretrainModule.configure_optimizers

        def interrupted(self):
            os.kill(os.getpid(), signal.SIGINT)
            return optimizers(self)

        monkeypatch.setattr(PretrainModule, "configure_optimizers", interrupted)
    assert main(tiny("mae", fmnist_dir, tmp_path, *BUDGET)) == 130
    assert capsys.readouterr().err.splitlines() == ["hybridssl: interrupted; resume with --resume"]
    assert signal.getsignal(signal.SIGINT) is before, "Ctrl+C works again"
