import pytest

from hybridssl.config import ConfigError, resolve


def test_defaults_are_resolved_and_visible():
    run = resolve({"method": "mae"})
    assert run.epochs == 100 and run.batch_size == 256 and run.model == "vit-pico"
    assert run.method_args["mask_ratio"] == 0.75 and run.method_args["norm_pix"] is True
    assert run.optim.base_lr == 1.5e-4 and run.optim.betas == (0.9, 0.95)


@pytest.mark.parametrize(
    "flags,field",
    [
        ({"method": "maee"}, "method: unknown method 'maee'"),
        ({"method": "mae", "batch_size": -4}, "batch_size"),
        ({"method": "mae", "model": "vit-huge"}, "model: unknown model"),
        ({"method": "mae", "dataset": "imagenet"}, "dataset: unknown dataset"),
        ({"method": "mae", "method_args": {"mask_ratio": 1.5}}, "method_args.mask_ratio"),
        ({"method": "mae", "method_args": {"mask_rate": 0.5}}, "method_args.mask_rate: unknown setting"),
        ({"method": "mae", "optim": {"base_lr": 0}}, "optim.base_lr"),
        ({"dataset": "cifar10"}, "method: required"),
    ],
)
def test_invalid_values_name_the_field(flags, field):
    with pytest.raises(ConfigError) as err:
        resolve(flags)
    assert field in str(err.value) and "\n" not in str(err.value)


def test_yaml_layer_and_flag_override(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method: mae\nbatch-size: 64\nepochs: 3\nmethod_args: {mask_ratio: 0.6}\noptim: {base_lr: 0.001}\n")
    run = resolve({"epochs": 5}, path)
    assert (run.batch_size, run.epochs, run.method_args["mask_ratio"], run.optim.base_lr) == (64, 5, 0.6, 0.001)


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: mae\nbatch_sizee: 3\n")
    with pytest.raises(ConfigError, match="batch_sizee: unknown setting"):
        resolve({}, bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        resolve({}, bad)
    with pytest.raises(ConfigError, match="not found"):
        resolve({}, tmp_path / "missing.yaml")
