"""The online k-NN monitor: data it uses, modes it restores, the metric it logs."""

from types import SimpleNamespace

import pytest
import torch

from hybridssl.cli import main
from hybridssl.config import resolve
from hybridssl.data.sources import ImageSet, data_info, load_dataset
from hybridssl.evaluation.monitor import KNNMonitor
from hybridssl.nn.vit import ViT, vit_config
from tests.conftest import toy_images


def test_bank_from_training_images_and_queries_from_the_test_split(fmnist_dir):
    run = resolve({"method": "simclr", "data_dir": str(fmnist_dir), "knn_monitor_every_epochs": 2, "knn_monitor_samples": 100})
    train = load_dataset("fashion-mnist", "train", fmnist_dir)
    monitor = KNNMonitor.for_run(run, train, data_info("fashion-mnist", train), "cls")
    monitor.take_sets()
    assert len(monitor.bank) == 100 and len(monitor.queries) == 100 and monitor.every_epochs == 2
    test = load_dataset("fashion-mnist", "test", fmnist_dir)
    first = monitor.queries.images[0]
    assert any(torch.equal(first, x) for x in test.images) and monitor.enabled


def test_a_folder_holds_out_a_fifth_and_unlabelled_images_switch_it_off(tmp_path):
    run = resolve({"method": "simclr", "dataset": "folder", "data_dir": str(tmp_path), "knn_monitor_every_epochs": 1, "knn_monitor_samples": 50})
    images, labels = toy_images(60)
    labelled = ImageSet(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels).long())
    monitor = KNNMonitor.for_run(run, labelled, data_info("toy", labelled), "cls")
    monitor.take_sets()
    assert (len(monitor.bank), len(monitor.queries)) == (40, 10)
    unlabelled = ImageSet(labelled.images, None)
    off = KNNMonitor.for_run(run, unlabelled, data_info("toy", unlabelled), "cls")
    with pytest.warns(UserWarning, match="k-NN monitor is off"):
        off.take_sets()
    assert not off.enabled


def test_only_rank_zero_samples_the_bank():
    """The other ranks never measure: sampling there would decode and hold thousands of images for nothing."""
    taken = []
    bank = ImageSet(torch.zeros(4, 1, 28, 28, dtype=torch.uint8), torch.arange(4))

    def sets():
        taken.append(1)
        return bank, bank

    monitor = KNNMonitor(1, sets, data_info("toy", bank), "cls")
    monitor.setup(SimpleNamespace(global_rank=1), None, "fit")
    assert not taken and monitor.bank is None and not monitor.enabled
    monitor.setup(SimpleNamespace(global_rank=0), None, "fit")
    monitor.setup(SimpleNamespace(global_rank=0), None, "fit")  # a second setup keeps the first sample
    assert len(taken) == 1 and monitor.bank is bank and monitor.enabled


def test_a_failure_while_sampling_turns_the_monitor_off_instead_of_stalling_the_other_ranks():
    def broken():
        raise RuntimeError("the test split went away")

    monitor = KNNMonitor(1, broken, data_info("toy", ImageSet(torch.zeros(1, 1, 28, 28, dtype=torch.uint8), None)), "cls")
    with pytest.warns(UserWarning, match="the test split went away.*k-NN monitor is off"):
        monitor.setup(SimpleNamespace(global_rank=0), None, "fit")
    assert not monitor.enabled


def test_measuring_restores_modes_and_leaves_weights_alone():
    images, labels = toy_images(80)
    data = ImageSet(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels).long())
    info = data_info("toy", data)
    encoder = ViT(vit_config("vit-pico", 28, 1))
    encoder.freeze_lower(2)
    encoder.train()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    sets = ImageSet(data.images[:60], data.labels[:60]), ImageSet(data.images[60:], data.labels[60:])
    monitor = KNNMonitor(1, lambda: sets, info, "cls", k=5)
    monitor.take_sets()
    top1 = monitor.measure(encoder, torch.device("cpu"))
    assert 0 <= top1 <= 100
    assert encoder.training and encoder.blocks[2].training and not encoder.blocks[1].training
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in before.items())


def test_monitor_metric_reaches_the_logs(fmnist_dir, tmp_path):
    args = ["pretrain", "--method", "simclr", "--data-dir", str(fmnist_dir), "--model", "vit-pico", "--accelerator", "cpu",
            "--no-progress-bar", "--batch-size", "32", "--limit-train", "32", "--epochs", "2", "--output", str(tmp_path),
            "--set", "knn_monitor_every_epochs=1", "--set", "knn_monitor_samples=64", "--set", "log_every_n_steps=1"]  # fmt: skip
    assert main(args) == 0
    rows = (tmp_path / "logs" / "csv" / "metrics.csv").read_text().splitlines()
    column = rows[0].split(",").index("monitor/knn_top1")
    values = [float(r.split(",")[column]) for r in rows[1:] if r.split(",")[column]]
    assert len(values) == 2 and all(0 <= v <= 100 for v in values)
