import pytest
import torch

from hybridssl.data.loader import InMemoryLoader


def ids_of(loader):
    return [b["ids"].tolist() for b in loader]


def test_batches_carry_images_ids_labels():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    loader = InMemoryLoader(images, torch.arange(10) % 3, batch_size=4, seed=0)
    assert len(loader) == 2
    batch = next(iter(loader))
    assert torch.equal(batch["images"].flatten().long(), batch["ids"])
    assert torch.equal(batch["labels"], batch["ids"] % 3)
    unlabelled = InMemoryLoader(images, None, 4)
    assert (next(iter(unlabelled))["labels"] == -1).all()


def test_order_depends_on_seed_and_epoch_only():
    images = torch.zeros(32, 1, 2, 2, dtype=torch.uint8)
    a, b = InMemoryLoader(images, None, 8, seed=1), InMemoryLoader(images, None, 8, seed=1)
    assert ids_of(a) == ids_of(b)
    a.set_epoch(1)
    assert ids_of(a) != ids_of(b)


def test_ranks_split_the_global_batch_of_one_process():
    images = torch.zeros(40, 1, 2, 2, dtype=torch.uint8)
    single = ids_of(InMemoryLoader(images, None, 8, seed=5))
    r0 = ids_of(InMemoryLoader(images, None, 4, seed=5, rank=0, world_size=2))
    r1 = ids_of(InMemoryLoader(images, None, 4, seed=5, rank=1, world_size=2))
    assert [a + b for a, b in zip(r0, r1)] == single


def test_resume_continues_at_the_consumed_position():
    images = torch.zeros(40, 1, 2, 2, dtype=torch.uint8)
    full = InMemoryLoader(images, None, 8, seed=2)
    expected = ids_of(full)
    cut = InMemoryLoader(images, None, 8, seed=2)
    for _ in range(2):
        cut.advance()
    resumed = InMemoryLoader(images, None, 8, seed=2)
    resumed.load_state_dict(cut.state_dict())
    resumed.set_epoch(0)
    assert ids_of(resumed) == expected[2:]


def test_dataset_smaller_than_a_batch_is_an_error():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        InMemoryLoader(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), None, 4)
