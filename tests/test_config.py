from pathlib import Path

import pytest

from hybridssl.config import ConfigError, resolve
from hybridssl.shipped_configs import SHIPPED_DIR, shipped_configs


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
        ({"method": "mae", "model": "vit-giant"}, "model: unknown model"),
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


SHIPPED_CONFIGS = list(shipped_configs().values())


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):  # an empty one adds no key: {} and {a: 1} differ in "a" only
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


DECLARATIONS = ("# tuned:", "# paper:", "# practical:")  # chosen by selection runs / a paper's recipe / for long runs


def _declared_tuned(path: Path) -> set[str]:
    """The fields a config's `# tuned: a, b.c` (or `# paper:`, `# practical:`) comment lines name."""
    declared: set[str] = set()
    for line in path.read_text().splitlines():
        for marker in DECLARATIONS:
            if line.startswith(marker):
                declared |= {name.strip() for name in line.removeprefix(marker).split("(")[0].split(",") if name.strip()}
    return declared


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_configs_differ_from_the_method_defaults_only_where_they_say_tuned(path: Path) -> None:
    """configs/ shows each method's defaults and the values changed for the data or the paper's scale
    (BENCHMARKS.md, docs/methods.md): a drifted default, or a change the file does not own up to, would
    make the file lie."""
    from_file = resolve({}, path)
    identity = ("method", "dataset", "model", "image_size", "patch_size")  # the data and the encoder, not the recipe
    from_defaults = resolve({key: getattr(from_file, key) for key in identity})
    mine, theirs = (_flat(c.model_dump()) for c in (from_file, from_defaults))
    unset = object()  # a setting one side leaves out (e.g. a stage's optimizer overrides, empty by default)
    differing = {key for key in mine.keys() | theirs.keys() if mine.get(key, unset) != theirs.get(key, unset)}
    assert differing == _declared_tuned(path)


@pytest.mark.parametrize("file_name", ["fashion-mnist.yaml", "imagenet-vit-b16.yaml"])
def test_every_method_ships_a_config(file_name: str) -> None:
    """Each built-in method has its small-image config and its paper-scale one (tests/test_paper_configs.py)."""
    from hybridssl.compare import user_facing_methods
    from hybridssl.methods import METHODS

    built_in = {name for name in user_facing_methods() if METHODS[name].__module__.startswith("hybridssl.")}
    assert {p.parent.name for p in SHIPPED_CONFIGS if p.name == file_name} == built_in


def test_a_shipped_config_is_found_by_name_from_anywhere(tmp_path, monkeypatch) -> None:
    """A pip install has no repository: `--config mae/imagenet-vit-b16` (or the repository path the docs
    show) finds the file in the package; a user's own file of that path comes first."""
    monkeypatch.chdir(tmp_path)
    shipped = resolve({}, shipped_configs()["mae/imagenet-vit-b16"])
    for name in ("mae/imagenet-vit-b16", "mae/imagenet-vit-b16.yaml", "configs/mae/imagenet-vit-b16.yaml"):
        assert resolve({}, Path(name)) == shipped
    assert (shipped.model, shipped.image_size, shipped.epochs) == ("vit-base", 224, 800)
    (tmp_path / "mae").mkdir()
    (tmp_path / "mae" / "imagenet-vit-b16.yaml").write_text("method: simclr\n")
    assert resolve({}, Path("mae/imagenet-vit-b16.yaml")).method == "simclr"
    with pytest.raises(ConfigError, match=r"mae/imagent-vit-b16 not found.*shipped: can/fashion-mnist, .*simclr/imagenet-vit-b16"):
        resolve({}, Path("mae/imagent-vit-b16"))


def test_the_repository_configs_folder_is_the_package_one() -> None:
    """One copy: the top-level configs/ the docs and benchmarks name links to the files the wheel ships."""
    assert (Path(__file__).resolve().parents[1] / "configs").resolve() == SHIPPED_DIR.resolve()


def test_the_configs_command_lists_every_shipped_config(capsys) -> None:
    from hybridssl.cli import main

    assert main(["configs"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[: len(SHIPPED_CONFIGS)]]
    assert listed == list(shipped_configs())
