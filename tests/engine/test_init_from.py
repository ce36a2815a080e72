"""--init-from: the whole encoder must fit; heads and queues are copied where names and shapes match."""

import pytest
import torch

from hybridssl.errors import CheckpointError
from hybridssl.engine.train import init_from_checkpoint
from tests.methods.toy import build


META = {"config": {"method": "toy", "model": "vit-pico"}, "encoder": {}, "data_info": {}}


def save(tmp_path, method, name="init.ckpt"):
    path = tmp_path / name
    torch.save({"hybridssl": META, "state_dict": {f"method.{k}": v for k, v in method.state_dict().items()}}, path)
    return path


def test_encoder_only_chaining_mae_to_head(tmp_path):
    mae = build("mae", seed=1)
    head = build("mae-ct-head", seed=2)
    projector = head.projector[0].weight.clone()
    loaded = init_from_checkpoint(head, save(tmp_path, mae))
    assert all(torch.equal(v, head.encoder.state_dict()[k]) for k, v in mae.encoder.state_dict().items())
    assert torch.equal(head.projector[0].weight, projector)  # MAE has no head: left as initialized
    assert {k for k in loaded if not k.startswith("encoder.")} == set()


def test_encoder_and_head_chaining_head_to_tune(tmp_path):
    head = build("mae-ct-head", seed=1)
    head.queue.enqueue(torch.randn(8, 256), torch.arange(8))
    tune = build("mae-ct-tune", seed=2)
    loaded = init_from_checkpoint(tune, save(tmp_path, head))
    assert {"projector.0.weight", "predictor.0.weight", "queue.features", "queue.ptr"} <= loaded
    assert torch.equal(tune.queue.features, head.queue.features) and tune.queue.ptr.item() == 8
    assert torch.equal(tune.target_projector.module[0].weight, head.projector[0].weight)  # after_init_from


def test_an_encoder_that_does_not_fit_is_an_error(tmp_path):
    mae = build("mae")
    state = {f"method.{k}": v for k, v in mae.state_dict().items() if not k.startswith("encoder.blocks.1.")}
    path = tmp_path / "partial.ckpt"
    torch.save({"hybridssl": META, "state_dict": state}, path)
    with pytest.raises(CheckpointError, match="encoder.blocks.1.*missing"):
        init_from_checkpoint(build("simclr"), path)
