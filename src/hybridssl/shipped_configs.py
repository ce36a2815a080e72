"""The configs that ship inside the package (`hybridssl/configs/<method>/<name>.yaml`), found by name.

A `pip install` puts no repository on the user's machine, so `--config mae/imagenet-vit-b16` must work
from anywhere; the repository's top-level `configs/` is a link to the same files."""

from __future__ import annotations

from pathlib import Path

from hybridssl.errors import ConfigError

SHIPPED_DIR = Path(__file__).parent / "configs"


def shipped_configs() -> dict[str, Path]:
    """Name ("mae/fashion-mnist") -> file, sorted by name."""
    return {f"{p.parent.name}/{p.stem}": p for p in sorted(SHIPPED_DIR.glob("*/*.yaml"))}


def summary(path: Path) -> str:
    """The file's first comment line: what the config is for."""
    return next(iter(path.read_text().splitlines()), "").removeprefix("#").strip()


def find_config(path: Path) -> Path:
    """A file that exists wins; otherwise a shipped config's name, with or without `.yaml`."""
    if path.is_file():
        return path
    shipped = shipped_configs()
    name = path.as_posix().removeprefix("configs/").removesuffix(".yaml")
    if name in shipped:
        return shipped[name]
    raise ConfigError(f"config: file {path} not found, and no shipped config has that name "
                      f"(shipped: {', '.join(shipped)}; `hybridssl configs` says what each is for)")  # fmt: skip
