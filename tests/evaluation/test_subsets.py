import pytest
import torch

from hybridssl.evaluation.batches import epoch_batches
from hybridssl.evaluation.subsets import SubsetSpec, fraction_subset, per_class_subset, stratified_holdout

# 3 classes with 50, 30 and 20 samples, interleaved
LABELS = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)[torch.randperm(100, generator=torch.Generator().manual_seed(5))]


def class_counts(idx: torch.Tensor) -> list[int]:
    return torch.bincount(LABELS[idx], minlength=3).tolist()


def test_per_class_subsets_are_balanced_seeded_and_unique():
    for k in (1, 2, 5, 10):
        idx = per_class_subset(LABELS, k, seed=0)
        assert class_counts(idx) == [k, k, k] and len(idx.unique()) == 3 * k
    assert torch.equal(per_class_subset(LABELS, 5, seed=1), per_class_subset(LABELS, 5, seed=1))
    assert not torch.equal(per_class_subset(LABELS, 5, seed=1), per_class_subset(LABELS, 5, seed=2))


def test_per_class_subset_fails_when_a_class_is_too_small():
    with pytest.raises(ValueError, match="class 2 has 20 samples"):
        per_class_subset(LABELS, 21, seed=0)


def test_fraction_subsets_keep_every_class_share():
    assert class_counts(fraction_subset(LABELS, 0.1, seed=0)) == [5, 3, 2]
    assert class_counts(fraction_subset(LABELS, 0.01, seed=0)) == [1, 1, 1], "at least one image per class"
    assert not torch.equal(fraction_subset(LABELS, 0.5, seed=0), fraction_subset(LABELS, 0.5, seed=1))


def test_holdout_is_a_stratified_partition():
    fit, held = stratified_holdout(LABELS, 0.1, seed=3)
    assert class_counts(held) == [5, 3, 2]
    assert torch.equal(torch.cat([fit, held]).sort().values, torch.arange(100))


def test_subset_spec_parsing():
    assert SubsetSpec.parse("1%") == SubsetSpec(fraction=0.01) and SubsetSpec.parse("1%").name == "1%"
    assert SubsetSpec.parse("0.5%").name == "0.5%"
    assert SubsetSpec.parse("5") == SubsetSpec(per_class=5) == SubsetSpec.parse("5/class")
    for bad in ("0", "0%", "150%", "five", "-2"):
        with pytest.raises(ValueError):
            SubsetSpec.parse(bad)


def test_epoch_batches_cover_small_and_large_sets():
    g = torch.Generator().manual_seed(0)
    big = epoch_batches(10, 4, g)
    assert [len(b) for b in big] == [4, 4] and len(torch.cat(big).unique()) == 8, "partial batch dropped, no repeats"
    (small,) = epoch_batches(3, 8, g)
    counts = torch.bincount(small, minlength=3)
    assert len(small) == 8 and counts.min() >= 2 and counts.max() <= 3, "a set below one batch is repeated evenly"


def test_subset_edges_exactly_all_exactly_one_and_out_of_range():
    assert class_counts(per_class_subset(LABELS, 20, seed=0)) == [20, 20, 20], "a class of exactly k gives all of it"
    assert torch.equal(fraction_subset(LABELS, 1.0, seed=0), torch.arange(100))
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
            fraction_subset(LABELS, bad, seed=0)


def test_holdout_of_tiny_classes_keeps_one_to_fit_and_holds_one_when_it_can():
    labels = torch.tensor([0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2])  # classes of 1, 2 and 10 samples
    fit, held = stratified_holdout(labels, 0.01, seed=0)
    assert torch.bincount(labels[held], minlength=3).tolist() == [0, 1, 1], "a single sample is never held out"
    assert torch.bincount(labels[fit], minlength=3).tolist() == [1, 1, 9]
    fit, held = stratified_holdout(labels, 0.95, seed=0)
    assert torch.bincount(labels[fit], minlength=3).tolist() == [1, 1, 1], "every class keeps one sample to fit"


def test_subset_spec_edges_and_messages():
    assert SubsetSpec.parse("100%") == SubsetSpec(fraction=1.0)
    assert SubsetSpec.parse("1") == SubsetSpec(per_class=1) and SubsetSpec.parse("1").name == "1/class"
    for bad, message in (("100.5%", "must be in"), ("0%", "must be in"), ("0", "must be positive"),
                         ("five", "expected a percentage like 1%")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            SubsetSpec.parse(bad)
