"""The package's imports flow one way (nn, data -> methods -> config -> weights -> engine, embedding ->
evaluation -> report -> compare, demo, cli, and the package's face): a lower layer never imports a higher one, and no two modules import each other, directly or through others. Imports inside functions
count too: a deferred import still couples the layers (and hid a cycle once)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "hybridssl"

# Lowest first. A module may import its own layer or any lower one; a module not listed is an error.
LAYERS: list[tuple[str, ...]] = [
    ("hybridssl.version", "hybridssl.settings", "hybridssl.files", "hybridssl.errors", "hybridssl.shipped_configs"),
    ("hybridssl.nn", "hybridssl.data", "hybridssl.losses", "hybridssl.slurm"),
    ("hybridssl.methods",),
    ("hybridssl.config",),
    ("hybridssl.weights",),
    ("hybridssl.engine", "hybridssl.embedding"),
    ("hybridssl.evaluation",),
    ("hybridssl.report",),
    ("hybridssl.compare", "hybridssl.demo", "hybridssl.cli", "hybridssl.__main__", "hybridssl.api"),
    ("hybridssl",),  # the package's face: it re-exports from every layer (lazily)
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    best = (-1, -1)  # (length of the matching prefix, layer)
    for level, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            package_root = prefix == "hybridssl"  # the package's own __init__ only, not everything below it
            if (module == prefix or (not package_root and module.startswith(prefix + "."))) and len(prefix) > best[0]:
                best = (len(prefix), level)
    if best[1] < 0:
        raise AssertionError(f"{module} is in no layer; add it to LAYERS")
    return best[1]


def imports_of(path: Path) -> set[str]:
    """hybridssl modules imported anywhere in the file (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("hybridssl")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hybridssl"):
            # `from hybridssl.methods import mae` imports the submodule when `mae` is one
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if (PACKAGE.parent / Path(*sub.split("."))).with_suffix(".py").exists() else node.module)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_no_import_from_a_higher_layer() -> None:
    upward = [
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
        for module, targets in graph().items()
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles() -> None:
    edges = graph()
    # a package's __init__ re-exporting its own modules is not a cycle of concepts
    def deps(module: str) -> set[str]:
        return {t for t in edges.get(module, ()) if t in edges and not module.startswith(t + ".") and t != module}

    cycles, state = [], {}

    def visit(module: str, stack: list[str]) -> None:
        state[module] = "open"
        for target in sorted(deps(module)):
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_a_module_in_no_layer_is_an_error():
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("hybridssl.brand_new_module")


@pytest.mark.parametrize("bad", ["upward", "cycle"])
def test_the_checks_catch_what_they_claim(tmp_path: Path, bad: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The two checks fail on a planted violation (so they are not true by construction)."""
    fake = {"hybridssl.nn.a": {"hybridssl.engine.b"}, "hybridssl.engine.b": set()}
    if bad == "cycle":
        fake = {"hybridssl.nn.a": {"hybridssl.nn.b"}, "hybridssl.nn.b": {"hybridssl.nn.a"}}
    monkeypatch.setattr(__import__(__name__, fromlist=["graph"]), "graph", lambda: fake)
    check = test_no_import_from_a_higher_layer if bad == "upward" else test_no_import_cycles
    with pytest.raises(AssertionError):
        check()
