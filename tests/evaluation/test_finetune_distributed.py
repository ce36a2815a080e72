"""Fine-tuning on several processes (torchrun): DDP, a global batch split over the processes, process 0
writing, every process's generators in the progress."""

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hybridssl.evaluation.finetune import FinetuneSettings, Progress, finetune
from hybridssl.nn.vit import ViT, ViTConfig
from tests.evaluation.test_finetune import PHOTO_INFO, streamed_split

pytestmark = pytest.mark.ddp

# no drop-path or device augmentation: the streamed crops come from (seed, epoch, sample), so two
# processes see exactly what one sees, and only the order of float sums differs
EXACT = FinetuneSettings(epochs=2, batch_size=16, base_lr=3e-2, drop_path=0.0)
DRAWING = FinetuneSettings(epochs=2, batch_size=16, base_lr=3e-2, drop_path=0.1, random_erasing=0.5, mixup=0.8)


def encoder() -> ViT:
    torch.manual_seed(0)
    return ViT(ViTConfig(image_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2))


def summary(result) -> dict:
    weights = torch.cat([p.detach().flatten() for p in result.classifier.parameters()])
    return {"loss": result.final_train_loss, "top1": result.test_top1, "weights": weights.tolist(), "resumed": result.resumed_after_epoch,
            "next_draw": torch.rand(()).item()}  # fmt: skip


def process(rank: int, world: int, store: str, photo_root: str, out: str, settings: dict, kill: bool) -> None:
    from hybridssl.evaluation import finetune as module

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    train, test = (streamed_split(photo_root, split, PHOTO_INFO) for split in ("train", "val"))
    args = (train, test, PHOTO_INFO, 4, "mean_patch", FinetuneSettings(**settings), 0)
    progress = Progress(__import__("pathlib").Path(out) / "progress.pt", "run")
    results = {}
    if kill:  # both processes stop after epoch 1, once process 0 has written it
        gather, save = module.every_process, Progress.save

        def gathered_then_killed(state):
            states = gather(state)
            if rank == 1:
                raise KeyboardInterrupt
            return states

        def saved_then_killed(self, state):
            save(self, state)
            raise KeyboardInterrupt

        module.every_process, Progress.save = gathered_then_killed, saved_then_killed
        with pytest.raises(KeyboardInterrupt):
            finetune(encoder(), *args, progress=progress)
        module.every_process, Progress.save = gather, save
        dist.barrier()
    results = summary(finetune(encoder(), *args, progress=progress))
    from hybridssl.errors import ConfigError
    from hybridssl.nn.distributed import same_on_every_process

    with pytest.raises(ConfigError, match="disagree"):  # raised on both: neither waits for the other
        same_on_every_process(rank, "the rank")
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(results, f)
    dist.destroy_process_group()


def on_two_processes(tmp_path, photo_root, settings: FinetuneSettings, kill: bool = False) -> list[dict]:
    out = tmp_path / ("killed" if kill else "whole")
    out.mkdir()
    mp.spawn(process, args=(2, str(out / "store"), str(photo_root), str(out), settings.model_dump(), kill), nprocs=2)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_two_processes_train_like_one_with_the_global_batch(photo_root, tmp_path):
    train, test = (streamed_split(photo_root, split, PHOTO_INFO) for split in ("train", "val"))
    one = summary(finetune(encoder(), train, test, PHOTO_INFO, 4, "mean_patch", EXACT, 0))
    first, second = on_two_processes(tmp_path, photo_root, EXACT)
    assert first["weights"] == second["weights"], "DDP keeps the processes' weights equal"
    assert torch.allclose(torch.tensor(first["weights"]), torch.tensor(one["weights"]), atol=1e-5)
    assert first["loss"] == pytest.approx(one["loss"], abs=1e-5), "the loss is the mean over both halves"
    assert first["top1"] == second["top1"] == one["top1"], "each tests its half of the test split; the counts are summed"
    assert first["next_draw"] != second["next_draw"], "each process draws its own augmentations and drop-path"


def as_process(monkeypatch, rank: int, world: int) -> None:
    from hybridssl.evaluation import finetune as module

    monkeypatch.setattr(module, "rank", lambda: rank)
    monkeypatch.setattr(module, "world_size", lambda: world)


def test_each_process_takes_its_slice_of_every_stored_global_batch_and_its_share_of_the_test_split(monkeypatch):
    from hybridssl.data.sources import ImageSet
    from hybridssl.data.views import crop_flip
    from hybridssl.evaluation.finetune import StoredEpochs, test_batches

    images, labels = torch.zeros(40, 1, 16, 16, dtype=torch.uint8), torch.arange(40)  # the label names the image
    data, augment = ImageSet(images, labels), crop_flip(PHOTO_INFO.__class__("toy", 16, 1, (0.5,), (0.2,), 4))

    def batches(rank: int, world: int) -> list[torch.Tensor]:
        as_process(monkeypatch, rank, world)
        epochs = StoredEpochs(data, augment, 16, torch.Generator().manual_seed(3), torch.device("cpu"))
        return [y for _, y in epochs.epoch(0)]

    alone = batches(0, 1)
    halves = [batches(r, 2) for r in (0, 1)]
    assert all(len(h) == len(alone) == 2 for h in halves)
    for step, whole in enumerate(alone):
        assert torch.equal(torch.cat([halves[0][step], halves[1][step]]), whole)
    shares = []
    for r in range(3):
        as_process(monkeypatch, r, 3)
        shares += [y for _, y in test_batches(data, 8)]
    assert sorted(torch.cat(shares).tolist()) == list(range(40)), "three shares: every test image once"


def test_a_state_written_by_another_number_of_processes_is_not_resumed(tmp_path):
    from tests.evaluation.test_finetune import INFO, blind_encoder, toy
    from hybridssl.data.sources import ImageSet

    (xtr, ytr), (xte, yte) = toy(64, 0), toy(32, 1)
    settings = FinetuneSettings(epochs=2, batch_size=32, base_lr=3e-2)
    args = (ImageSet(xtr, ytr), ImageSet(xte, yte), INFO, 4, "mean_patch", settings, 0)
    progress = Progress(tmp_path / "progress.pt", "run")
    finetune(blind_encoder(), *args, progress=progress)
    state = torch.load(progress.path, weights_only=True)
    progress.save({**state, "epochs_done": 1, "processes": [{"rng": state["rng"]}] * 2})
    assert finetune(blind_encoder(), *args, progress=progress).resumed_after_epoch == 0


def test_two_processes_resume_with_each_ones_generators(photo_root, tmp_path):
    whole = on_two_processes(tmp_path, photo_root, DRAWING)
    resumed = on_two_processes(tmp_path, photo_root, DRAWING, kill=True)
    assert [r["resumed"] for r in resumed] == [1, 1] and [r["resumed"] for r in whole] == [0, 0]
    assert resumed[0]["weights"] == whole[0]["weights"] and resumed[0]["loss"] == whole[0]["loss"]


def test_under_torchrun_the_first_process_alone_writes_and_reports(tiny_mae_run, fmnist_dir, tmp_path):
    from tests.subprocess_runs import start_driver
    from tests.test_multinode import free_port

    args = ["evaluate", "--checkpoint", str(tiny_mae_run / "checkpoints" / "last.ckpt"), "--data-dir", str(fmnist_dir),
            "--output", str(tmp_path), "--limit-train", "128", "--limit-test", "64", "--protocol", "finetune", "--epochs", "1",
            "--set", "finetune.batch_size=32"]  # fmt: skip
    port = str(free_port())
    launched = [
        start_driver(args, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE="2", RANK=str(r), LOCAL_RANK=str(r))
        for r in (0, 1)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=600)[0].decode(errors="replace") for p in launched]
    assert [p.returncode for p in launched] == [0, 0], outputs
    (row,) = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert row["protocol"] == "finetune" and row["settings"]["steps"] == 128 // 32
    assert (tmp_path / row["settings"]["weights"]).is_file() and not list((tmp_path / "finetune-progress").glob("*"))
    assert "1 result(s) appended" in outputs[0] and "finetune" not in outputs[1]


def test_under_torchrun_the_probes_are_refused_before_any_work(monkeypatch, capsys, tmp_path):
    from hybridssl.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none.ckpt"), "--output", str(tmp_path), "--protocol", "knn"]) == 2
    assert "only finetune runs on several processes" in capsys.readouterr().err


def warned_process(rank: int, world: int, store: str, photo_root: str, out: str) -> None:
    """SLURM's warning reaches process 0 alone, during epoch 1: both must stop after it, neither waits."""
    from datetime import timedelta

    from hybridssl.errors import RunRequeued
    from hybridssl.slurm import WARNING

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    train, test = (streamed_split(photo_root, split, PHOTO_INFO) for split in ("train", "val"))
    WARNING.listening, WARNING.received = True, rank == 0
    progress = Progress(__import__("pathlib").Path(out) / "progress.pt", "run")
    try:
        finetune(encoder(), train, test, PHOTO_INFO, 4, "mean_patch", DRAWING, 0, progress=progress)
        outcome = {"stopped": False}
    except RunRequeued as exc:
        outcome = {"stopped": True, "message": str(exc)}
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(outcome, f)
    dist.destroy_process_group()


@pytest.mark.slow  # two processes streaming photos for a rare launch (not torchrun) inside SLURM
def test_a_warning_that_reaches_one_process_stops_every_process_after_the_same_epoch(photo_root, tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)  # process 0 cannot ask SLURM: it says so and stops
    mp.spawn(warned_process, args=(2, str(tmp_path / "store"), str(photo_root), str(tmp_path)), nprocs=2)
    first, second = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert first["stopped"] and second["stopped"], "both stop, after the same epoch"
    assert "stopped before fine-tune epoch 2 of 2" in first["message"] and second["message"] == "", "process 0 speaks for both"
    assert torch.load(tmp_path / "progress.pt", weights_only=True)["epochs_done"] == 1
