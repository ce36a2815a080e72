"""The papers' fine-tune regularisers: RandAugment per image, random erasing, mixup / cutmix."""

import random

import numpy as np
import pytest
import torch

from hybridssl.data.rand_augment import RandAugment, check_policy
from hybridssl.data.sources import ImageSet
from hybridssl.data.streaming import cut_crops
from hybridssl.data.views import Crop, Views
from hybridssl.evaluation.finetune import FinetuneSettings, finetune
from hybridssl.evaluation.regularizers import BatchRegularizers, RandomErasing, label_mixing
from tests.evaluation.test_finetune import INFO, blind_encoder, toy

PAPER = {"rand_augment": "rand-m9-mstd0.5-inc1", "random_erasing": 0.25, "mixup": 0.8, "cutmix": 1.0}
POLICY = RandAugment("rand-m9-mstd0.5-inc1", (128,))


def class_coloured(labels: torch.Tensor, size: int = 16) -> torch.Tensor:
    """Images filled with their class index: a mixed image's mean pixel is its label mixture's mean class."""
    return labels.float().view(-1, 1, 1, 1).expand(-1, 3, size, size).clone()


@pytest.mark.parametrize("mixup, cutmix", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_each_mixed_image_is_its_label_mixture(mixup, cutmix):
    """Partner and weight agree between image and label (cutmix: the weight of the box actually pasted)."""
    mix = label_mixing(mixup, cutmix, 0.5, num_classes=5)
    kinds = set()
    for seed in range(20):
        torch.manual_seed(seed)
        labels = torch.arange(16) % 5  # image 1's partner (image 0) is of another class
        images, probs = mix(class_coloured(labels), labels)
        assert probs.shape == (16, 5) and torch.allclose(probs.sum(1), torch.ones(16))
        assert torch.allclose(images.mean((1, 2, 3)), probs @ torch.arange(5.0), atol=1e-5)
        distinct = images[1, 0].unique().numel()
        kinds.add("cutmix" if distinct == 2 else "mixup" if distinct == 1 and not images[1, 0, 0, 0].item().is_integer() else "none")
    expected = {"mixup"} if cutmix == 0 else {"cutmix"} if mixup == 0 else {"mixup", "cutmix"}
    assert expected <= kinds, kinds


def test_cutmix_share_is_the_share_of_cutmix_batches():
    mix = label_mixing(0.8, 1.0, 0.2, num_classes=5)
    labels = torch.arange(16) % 5
    cut = 0
    for seed in range(200):
        torch.manual_seed(seed)
        images, _ = mix(class_coloured(labels), labels)
        cut += images[1, 0].unique().numel() == 2
    assert 0.12 < cut / 200 < 0.28


def test_erasing_comes_before_mixing():
    """The papers erase each image (a per-image transform), then mix the batch: a mixed image carries
    its partner's box too."""
    order = []
    regularize = BatchRegularizers(0.5, 0.8, 0.0, 0.5, 5)
    erase, mix = regularize.erase, regularize.mix
    regularize.erase = lambda x: order.append("erase") or erase(x)
    regularize.mix = lambda x, y: order.append("mix") or mix(x, y)
    regularize(torch.zeros(4, 1, 8, 8), torch.arange(4))
    assert order == ["erase", "mix"]


def test_label_mixing_is_off_at_zero_alphas():
    assert label_mixing(0.0, 0.0, 0.5, 5) is None
    x, y = torch.randn(4, 1, 8, 8), torch.arange(4)
    assert BatchRegularizers(0.0, 0.0, 0.0, 0.5, 5)(x, y) == (x, y)


def test_random_erasing_fills_one_box_per_chosen_image_with_noise():
    torch.manual_seed(0)
    x = torch.zeros(200, 3, 32, 32)
    erased = RandomErasing(1.0)(x)
    hit = erased != 0
    assert hit.any(1).flatten(1).any(1).all(), "p = 1: every image gets a box"
    assert torch.equal(hit[:, 0], hit[:, 1]) and torch.equal(hit[:, 0], hit[:, 2]), "one box through all channels"
    for mask in hit[:, 0]:
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert mask.sum() == height * width, "a box, not scattered pixels"
        assert 0.015 <= mask.float().mean() <= 0.34
    noise = erased[hit]
    assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1) < 0.05, "N(0, 1) in the normalized space"
    assert not torch.equal(erased[:, 0][hit[:, 0]], erased[:, 1][hit[:, 1]]), "noise per channel"
    share = (RandomErasing(0.25)(x) != 0).flatten(1).any(1).float().mean()
    assert 0.15 < share < 0.35


def test_rand_augment_depends_on_image_policy_and_seed_only():
    image = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    python_state, numpy_state = random.getstate(), np.random.get_state()[1].copy()
    outs = [POLICY(image, seed) for seed in range(12)]
    assert random.getstate() == python_state and np.array_equal(np.random.get_state()[1], numpy_state)
    assert all(o.shape == image.shape and o.dtype == torch.uint8 for o in outs)
    random.seed(99)
    np.random.seed(99)
    assert torch.equal(POLICY(image, 3), outs[3]), "the process's own generators do not matter"
    assert sum(not torch.equal(o, image) for o in outs) >= 8 and len({o.sum().item() for o in outs}) >= 8
    rgb = torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8)
    assert RandAugment("rand-m9-mstd0.5-inc1", (124, 116, 104))(rgb, 0).shape == rgb.shape


def test_posterize_at_the_top_magnitude_gives_black_as_with_the_papers_pillow():
    """Pillow 13 refuses 0 bits, which timm's increasing posterize reaches at magnitude 10."""
    strongest = RandAugment("rand-m10-n1-p1-inc1", (128,))  # one op per image, always applied, at full strength
    image = torch.randint(100, 150, (1, 12, 12), dtype=torch.uint8)
    outs = [strongest(image, seed) for seed in range(150)]
    assert any(int(o.max()) == 0 for o in outs), "posterize to 0 bits: black"


def test_rand_augment_fills_with_the_data_mean_and_resamples_bicubic():
    from PIL import Image

    from hybridssl.data.rand_augment import _cached_transform, mean_fill

    assert mean_fill((0.5, 0.25, 1.0)) == (128, 64, 255) and mean_fill([0.286]) == (73,)
    ops = _cached_transform("rand-m9-mstd0.5-inc1", (124, 116, 104)).ops
    assert {op.kwargs["resample"] for op in ops} == {Image.BICUBIC}, "MAE asks timm for bicubic"
    assert {op.kwargs["fillcolor"] for op in ops} == {(124, 116, 104)}


def test_a_policy_timm_cannot_build_is_refused_with_an_example():
    assert check_policy("rand-m9-mstd0.5-inc1") == "rand-m9-mstd0.5-inc1"
    for bad in ("rand-q9", "augmix-m5", "rand-m9-n2x"):
        with pytest.raises(ValueError, match="rand-m9-mstd0.5-inc1"):
            FinetuneSettings(rand_augment=bad)


def test_workers_and_stored_batches_run_rand_augment_after_the_crop():
    seen = []

    class Recorded(RandAugment):
        def __call__(self, image, seed):
            seen.append((image, seed))
            return super().__call__(image, seed)

    image = torch.randint(0, 256, (1, 24, 24), dtype=torch.uint8)
    plain, policied = Crop(16, (0.5, 1.0)), Crop(16, (0.5, 1.0), rand_augment=Recorded(*vars(POLICY).values()))
    (cut,) = cut_crops(image, [plain], seed=5)
    (augmented,) = cut_crops(image, [policied], seed=5)
    ((augmented_input, seed),) = seen
    assert torch.equal(augmented_input, cut), "the same crop and flip, then RandAugment"
    assert torch.equal(augmented, POLICY(cut, seed)) and not torch.equal(augmented, cut)
    assert cut_crops(image, [policied], seed=6)[0].shape == cut.shape and seen[1][1] != seed

    images = torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8)
    torch.manual_seed(1)
    (without,) = Views([plain], INFO)(images)
    torch.manual_seed(1)
    (with_policy,) = Views([policied], INFO)(images)
    differs = (with_policy - without).flatten(1).abs().amax(1) > 1e-3
    assert differs.sum() >= 4, "stored images get RandAugment per image too"


def test_each_regulariser_changes_training_and_the_defaults_leave_the_records_unchanged():
    (xtr, ytr), (xte, yte) = toy(64, 0), toy(32, 1)
    base = FinetuneSettings(epochs=1, batch_size=32, base_lr=3e-2)
    losses = {}
    for name, value in [("none", None), *PAPER.items()]:
        settings = base if value is None else base.model_copy(update={name: value})
        losses[name] = finetune(blind_encoder(), ImageSet(xtr, ytr), ImageSet(xte, yte), INFO, 4, "mean_patch", settings, 0).final_train_loss
    assert len(set(losses.values())) == len(losses), losses
    before = {"epochs", "batch_size", "base_lr", "layer_decay", "weight_decay", "betas", "drop_path", "label_smoothing",
              "warmup_fraction", "min_lr_fraction", "crop_scale", "grad_clip", "eval_batch_size"}  # fmt: skip
    assert set(base.model_dump(mode="json")) == before, "results measured before the regularisers keep their keys"
    assert set(FinetuneSettings(**PAPER).to_dict()) == before | set(PAPER)
