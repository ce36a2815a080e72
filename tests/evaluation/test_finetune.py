import pytest
import torch

from hybridssl.data.sources import DataInfo, ImageSet
from hybridssl.embedding.features import encoder_features
from hybridssl.evaluation.finetune import FinetuneSettings, Progress, finetune, with_drop_path
from hybridssl.evaluation.linear import ProbeSettings, linear_probe_accuracy
from hybridssl.nn.vit import ViT, ViTConfig
from tests.conftest import toy_images



pytestmark = pytest.mark.usefixtures("one_thread")


INFO = DataInfo("toy", 16, 1, (0.2,), (0.3,), 4)


def toy(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = toy_images(n, size=16, num_classes=4, seed=seed)
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y).long()


def blind_encoder() -> ViT:
    """A tiny ViT whose zeroed patch embedding sees no image content: its frozen features are the same for
    every image, so no probe can beat chance, but end-to-end training can learn the embedding."""
    torch.manual_seed(0)
    encoder = ViT(ViTConfig(image_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=1, num_heads=2))
    torch.nn.init.zeros_(encoder.patch_embed.proj.weight)
    torch.nn.init.zeros_(encoder.patch_embed.proj.bias)
    return encoder


def test_finetune_improves_over_the_linear_probe_and_leaves_the_encoder_untouched():
    (xtr, ytr), (xte, yte) = toy(128, 0), toy(64, 1)
    encoder = blind_encoder()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    train_f, test_f = (encoder_features(encoder, x, INFO, "mean_patch") for x in (xtr, xte))
    probe = linear_probe_accuracy(train_f, ytr, test_f, yte, ProbeSettings(epochs=20, batch_size=32))
    # crop_scale (1, 1): no crop, the class is the row of a bar (flips keep it)
    settings = FinetuneSettings(epochs=20, batch_size=32, base_lr=3e-2, crop_scale=(1.0, 1.0))
    tuned = finetune(encoder, ImageSet(xtr, ytr), ImageSet(xte, yte), INFO, 4, "mean_patch", settings, seed=0)
    assert probe == 25.0, "identical features for every image: chance"
    assert tuned.test_top1 >= 90.0 and tuned.steps == 20 * (128 // 32)
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in before.items())


def test_drop_path_rebuild_keeps_the_weights():
    encoder = blind_encoder()
    rebuilt = with_drop_path(encoder, 0.1)
    assert rebuilt.cfg.drop_path == 0.1 and encoder.cfg.drop_path == 0.0
    assert all(torch.equal(v, rebuilt.state_dict()[k]) for k, v in encoder.state_dict().items())
    assert rebuilt.blocks[-1].drop_path1.drop_prob == 0.1


# the papers' regularisers draw too (RandAugment per image, erasing, mixup / cutmix): a resume repeats them
PAPER_REGULARISERS = {"rand_augment": "rand-m9-mstd0.5-inc1", "random_erasing": 0.25, "mixup": 0.8, "cutmix": 1.0}


@pytest.mark.parametrize("regularisers", [{}, PAPER_REGULARISERS], ids=["crop-flip", "paper-regularisers"])
def test_a_killed_finetune_resumes_after_its_last_epoch_with_the_uninterrupted_result(tmp_path, monkeypatch, regularisers):
    (xtr, ytr), (xte, yte) = toy(96, 0), toy(32, 1)
    settings = FinetuneSettings(epochs=3, batch_size=32, base_lr=3e-2, drop_path=0.1, **regularisers)  # crops, flips, drop-path: random
    args = (ImageSet(xtr, ytr), ImageSet(xte, yte), INFO, 4, "mean_patch", settings, 0)
    whole = finetune(blind_encoder(), *args)

    saves: list[int] = []
    original = Progress.save

    def counted(self, state, kill_at=None):
        original(self, state)
        saves.append(state["epochs_done"])
        if state["epochs_done"] == kill_at:
            raise KeyboardInterrupt

    progress = Progress(tmp_path / "progress.pt", "run")
    monkeypatch.setattr(Progress, "save", lambda self, state: counted(self, state, kill_at=2))
    with pytest.raises(KeyboardInterrupt):
        finetune(blind_encoder(), *args, progress=progress)
    assert saves == [1, 2] and progress.path.is_file()
    monkeypatch.setattr(Progress, "save", lambda self, state: counted(self, state))
    saves.clear()
    resumed = finetune(blind_encoder(), *args, progress=progress)
    assert saves == [3], "epochs 1 and 2 are not trained again"
    assert (resumed.final_train_loss, resumed.test_top1, resumed.steps) == (whole.final_train_loss, whole.test_top1, whole.steps)
    assert resumed.resumed_after_epoch == 2 and whole.resumed_after_epoch == 0

    # killed after the last epoch (during the test pass): no epoch is trained again
    saves.clear()
    again = finetune(blind_encoder(), *args, progress=progress)
    assert saves == [] and again.test_top1 == whole.test_top1 and again.resumed_after_epoch == 3


def test_a_state_of_other_settings_or_an_unreadable_one_is_not_used(tmp_path, monkeypatch):
    (xtr, ytr), (xte, yte) = toy(96, 0), toy(32, 1)
    settings = FinetuneSettings(epochs=2, batch_size=32, base_lr=3e-2, drop_path=0.1)
    whole = finetune(blind_encoder(), ImageSet(xtr, ytr), ImageSet(xte, yte), INFO, 4, "mean_patch", settings, 0)
    path = tmp_path / "progress.pt"
    other = settings.model_copy(update={"base_lr": 1e-2, "epochs": 1})
    finetune(blind_encoder(), ImageSet(xtr, ytr), ImageSet(xte, yte), INFO, 4, "mean_patch", other, 0, progress=Progress(path, "other"))
    assert path.is_file()
    fresh = finetune(blind_encoder(), ImageSet(xtr, ytr), ImageSet(xte, yte), INFO, 4, "mean_patch", settings, 0, progress=Progress(path, "run"))
    assert fresh.resumed_after_epoch == 0 and fresh.final_train_loss == whole.final_train_loss
    path.write_bytes(b"torn")
    with pytest.warns(UserWarning, match="unreadable progress file"):
        torn = finetune(blind_encoder(), ImageSet(xtr, ytr), ImageSet(xte, yte), INFO, 4, "mean_patch", settings, 0, progress=Progress(path, "run"))
    assert torn.resumed_after_epoch == 0 and torn.final_train_loss == whole.final_train_loss


def streamed_split(root, split: str, info: DataInfo, num_workers: int = 0):
    from hybridssl.evaluation.data import eval_split

    return eval_split("folder", split, root, None, info, loader="stream", num_workers=num_workers)


PHOTO_INFO = DataInfo("folder", 32, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 4)


def test_streamed_batches_are_the_workers_crops_of_the_epochs_order_with_their_labels(photo_root):
    """Image i of a batch is the crop pretraining's workers cut from file i at (seed, epoch, i), and its
    label is file i's: a shifted order or label would still train, on the wrong pairs."""
    from hybridssl.data.loader import EpochBatches
    from hybridssl.data.streaming import StreamingSet, cut_crops, sample_seed
    from hybridssl.data.views import crop_flip
    from hybridssl.evaluation.finetune import StreamedEpochs

    train = streamed_split(photo_root, "train", PHOTO_INFO)
    assert isinstance(train, StreamingSet)
    augment = crop_flip(PHOTO_INFO, num_views=1, scale=(0.5, 1.0))
    batches = StreamedEpochs(train, augment, 16, seed=3, device=torch.device("cpu"))
    orders = {}
    for epoch in (1, 0):  # out of order: each epoch is its own (seed, epoch), not the next of a count
        expected = EpochBatches(len(train), 16, seed=3)
        expected.set_epoch(epoch)
        orders[epoch] = order = expected.epoch_order()[:, 0]
        seen = list(batches.epoch(epoch))
        assert len(seen) == len(batches) == len(train) // 16
        for (x, y), ids in zip(seen, order):
            assert torch.equal(y, train.labels[ids])
        first = int(order[0, 0])
        (crop,) = cut_crops(train.index.read(first, 3), augment.crops, sample_seed(3, epoch, first))
        assert torch.allclose(seen[0][0][0], augment.finish([crop[None]])[0][0])
    assert not torch.equal(orders[0], orders[1])


@pytest.mark.parametrize("num_workers, regularisers", [(0, {}), (2, PAPER_REGULARISERS)], ids=["crop-flip", "workers-paper-regularisers"])
def test_a_streamed_finetune_never_decodes_the_split_whole_and_resumes_exactly(photo_root, tmp_path, monkeypatch, num_workers, regularisers):
    """With workers too: creating the loader's iterator must not move the RNG drop-path draws from (it
    did once per start, so a resumed run drew once more than a whole one). RandAugment runs in the
    workers there."""
    from hybridssl.data.streaming import StreamingSet

    def whole_split_decoded(*args, **kwargs):
        raise AssertionError("a streamed split was decoded into memory")

    monkeypatch.setattr(StreamingSet, "materialize", whole_split_decoded)
    train, test = (streamed_split(photo_root, split, PHOTO_INFO, num_workers) for split in ("train", "val"))
    encoder = ViT(ViTConfig(image_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2))
    settings = FinetuneSettings(epochs=2, batch_size=16, base_lr=3e-2, drop_path=0.1, **regularisers)
    args = (train, test, PHOTO_INFO, 4, "mean_patch", settings, 0)
    whole = finetune(encoder, *args)
    assert whole.steps == 2 * (len(train) // 16)

    progress = killed_after_the_first_epoch(monkeypatch, encoder, args, tmp_path / "progress.pt")
    resumed = finetune(encoder, *args, progress=progress)
    assert resumed.resumed_after_epoch == 1
    assert (resumed.final_train_loss, resumed.test_top1) == (whole.final_train_loss, whole.test_top1)


def killed_after_the_first_epoch(monkeypatch, encoder, args: tuple, path) -> Progress:
    """Runs finetune(encoder, *args) with progress in `path` until it is killed right after saving epoch
    1; returns that progress."""
    original = Progress.save

    def killed(self, state):
        original(self, state)
        raise KeyboardInterrupt

    progress = Progress(path, "run")
    monkeypatch.setattr(Progress, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        finetune(encoder, *args, progress=progress)
    monkeypatch.setattr(Progress, "save", original)
    return progress


def test_a_streamed_share_smaller_than_a_batch_is_decoded_and_larger_ones_stream(photo_root):
    from hybridssl.data.streaming import StreamingSet
    from hybridssl.evaluation.data import decoded_when_small

    share = streamed_split(photo_root, "train", PHOTO_INFO).select(torch.arange(8))
    kept = decoded_when_small(share, batch_size=16)
    assert isinstance(kept, ImageSet) and torch.equal(kept.labels, share.labels)
    assert decoded_when_small(share, batch_size=8) is share and isinstance(share, StreamingSet)


def test_grad_checkpointing_recomputes_the_blocks_with_the_same_result_and_stays_out_of_the_records(monkeypatch):
    from hybridssl.nn import vit

    calls = []
    original = vit.checkpoint
    monkeypatch.setattr(vit, "checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k))
    (xtr, ytr), (xte, yte) = toy(64, 0), toy(32, 1)
    settings = FinetuneSettings(epochs=1, batch_size=32, base_lr=3e-2, drop_path=0.1)  # drop-path: its RNG is replayed
    plain = finetune(blind_encoder(), ImageSet(xtr, ytr), ImageSet(xte, yte), INFO, 4, "mean_patch", settings, 0)
    assert calls == []
    saving = settings.model_copy(update={"grad_checkpointing": True})
    checkpointed = finetune(blind_encoder(), ImageSet(xtr, ytr), ImageSet(xte, yte), INFO, 4, "mean_patch", saving, 0)
    assert len(calls) == 2, "the encoder's one block, in each of the two training steps"
    assert (checkpointed.final_train_loss, checkpointed.test_top1) == (plain.final_train_loss, plain.test_top1)
    assert saving.to_dict() == settings.to_dict() and "grad_checkpointing" not in settings.model_dump(mode="json")
