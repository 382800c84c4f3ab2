"""The package's layering (docs/architecture.md): no import cycle inside pnnh, and no import upward.

Every ``import`` of a pnnh module, at module top or inside a function, is an edge; a module may import
only modules of its own layer or below, and the graph has no cycle. The layers are the table below,
which docs/architecture.md describes in words.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "pnnh"

# Lowest first. A package (models, data, analysis) is one unit: its modules share its layer.
LAYERS = [
    ("errors", "io", "progress"),
    ("device", "distributed", "checkpoint", "config", "optim", "recipes"),
    ("models", "data"),
    ("convert", "profile", "entries"),
    ("hub", "resnet_import"),
    ("analysis", "train", "evaluate", "bench", "export", "timm"),
    ("compare",),
    ("cli", "__main__", "__init__"),
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def imports(path: Path) -> set[str]:
    """The pnnh modules ``path`` imports (absolute dotted names below pnnh, e.g. ``models.registry``)."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    if name == "__init__":
        package = []
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.split(".")[0] == "pnnh":
                target = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:  # `from . import distributed` names a module, not an attribute
                sub = [*target, alias.name]
                found.add(".".join(sub) if resolve(sub) else ".".join(target))
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("pnnh.")}
    return {m for m in found if m and resolve(m.split("."))}


def resolve(parts: list[str]) -> bool:
    path = SRC.joinpath(*parts)
    return bool(parts) and (path.with_suffix(".py").exists() or (path / "__init__.py").exists())


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    return {name: imports(path) - {name} for name, path in modules.items()}


def unit(module: str) -> str:
    return module.split(".")[0]


def test_every_module_has_a_layer() -> None:
    missing = sorted({unit(m) for m in graph()} - set(LAYER))
    assert not missing, f"modules without a layer in LAYERS (and docs/architecture.md): {missing}"


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    return [f"{a} -> {b}" for a, targets in sorted(edges.items()) for b in sorted(targets)
            if LAYER[unit(b)] > LAYER[unit(a)]]


def test_no_import_runs_upward() -> None:
    upward = upward_imports(graph())
    assert not upward, f"imports from a lower layer up to a higher one: {upward}"


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_checks_find_a_planted_fault() -> None:
    """The checks can fail: the import that main had before (the registry loading checkpoints) is a cycle
    and an import upward."""
    edges = graph()
    assert "models.registry" in edges["models"] and "models" in edges["hub"]  # the graph is read
    planted = {**edges, "models.registry": edges["models.registry"] | {"hub"}}
    assert find_cycle(planted) is not None
    assert upward_imports(planted) == ["models.registry -> hub"]


@pytest.mark.parametrize("module", ["models.registry", "models.layers", "checkpoint", "convert"])
def test_the_model_layer_knows_no_files(module: str) -> None:
    """Models know nothing of checkpoints; the checkpoint formats know nothing of models; convert
    depends on models, never the reverse."""
    deps = graph()[module]
    assert not {d for d in deps if unit(d) in ("checkpoint", "hub", "train", "compare", "cli")} - {module}
    if module.startswith("models"):
        assert "convert" not in deps
    if module == "checkpoint":
        assert not {d for d in deps if unit(d) in ("models", "convert")}
