import statistics

import pytest
import torch

from hybridssl.evaluation.lowshot import LowshotSettings, lowshot_trials

LABELS = torch.arange(4).repeat(25)  # 4 classes x 25


def test_every_head_sees_the_same_seeded_subsets_and_mean_std_are_over_seeds():
    seen: dict[str, list[tuple[int, list[int]]]] = {"linear": [], "finetune": []}

    def fake(head: str):
        def train(idx: torch.Tensor, seed: int) -> float:
            seen[head].append((seed, idx.tolist()))
            return float(len(idx) + seed)  # a value we can predict
        return train

    settings = LowshotSettings(subsets=["10%", "2"], seeds=3)
    results = lowshot_trials(LABELS, settings, {"linear": fake("linear"), "finetune": fake("finetune")}, base_seed=10)
    assert [(r.head, r.subset, r.labelled) for r in results] == [
        ("linear", "10%", 12), ("finetune", "10%", 12), ("linear", "2/class", 8), ("finetune", "2/class", 8)
    ]  # fmt: skip
    assert seen["linear"] == seen["finetune"], "both heads train on identical subsets"
    assert [s for s, _ in seen["linear"]] == [10, 11, 12, 10, 11, 12]
    for seed, idx in seen["linear"][3:]:
        assert torch.bincount(LABELS[idx], minlength=4).tolist() == [2, 2, 2, 2]
    assert len({tuple(idx) for _, idx in seen["linear"][3:]}) == 3, "each seed draws another subset"
    r = results[2]
    assert r.per_seed == [18.0, 19.0, 20.0] and r.seeds == [10, 11, 12]
    assert r.mean == 19.0 and r.std == pytest.approx(statistics.stdev([18, 19, 20])) == 1.0


def test_settings_validate_subset_names():
    assert LowshotSettings(subsets=["1%", "5"]).subsets == ("1%", "5/class")
    with pytest.raises(ValueError, match="subsets"):
        LowshotSettings(subsets=["lots"])
    with pytest.raises(ValueError, match="heads"):
        LowshotSettings(heads=["knn"])


def test_a_subset_larger_than_a_class_names_the_flag():
    with pytest.raises(ValueError, match="lowshot-subsets"):
        lowshot_trials(LABELS, LowshotSettings(subsets=["30"], seeds=1), {"linear": lambda idx, seed: 0.0})


def test_settings_records_are_json_values_as_written_to_results_jsonl():
    import json

    from hybridssl.evaluation.linear import ProbeSettings
    from hybridssl.evaluation.lowshot import LowshotSettings

    for record in (ProbeSettings().to_dict(), LowshotSettings().to_dict()):
        assert json.loads(json.dumps(record)) == record
    assert ProbeSettings().to_dict()["base_lrs"] == [0.01, 0.03, 0.1, 0.3, 1.0]
