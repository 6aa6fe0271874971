"""The package's import graph: no circles, and every import points down the layers.

Read from the source with ``ast`` (every ``import`` statement, those inside functions too), so a
lazy import that only hides a circle counts as one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vqdiffusion"

# Bottom to top; a module may import from its own layer and the layers below it.
LAYERS = [
    {"version", "utils"},
    {"ops", "speed"},
    {"models"},
    {"diffusion"},
    {"conditions"},
    {"components"},
    {"convert"},
    {"pipeline"},
    {"data"},
    {"eval"},
    {"lit"},
    {"tasks", "tiny", "demo", "__init__"},
]


def _module_name(path: Path) -> str:
    parts = ["vqdiffusion", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (a ``from pkg import name`` of a submodule
    counts as an import of that submodule)."""
    files = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                source = ".".join(base + ([node.module] if node.module else []))
                names = [f"{source}.{alias.name}" for alias in node.names]
                targets.update([n for n in names if n in files] or [source])
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        graph[module] = {t for t in targets if t in files and t != module}
    return graph


def _layer(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for index, names in enumerate(LAYERS):
        if top in names:
            return index
    raise AssertionError(f"{module} is in no layer of LAYERS: add its top-level name")


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_package_has_no_import_circle():
    cycle = _cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_every_import_points_down_the_layers():
    upward = [f"{a} -> {b}" for a, targets in import_graph().items() for b in sorted(targets) if _layer(a) < _layer(b)]
    assert not upward, upward


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, None),
])
def test_the_circle_finder_finds_circles_and_only_circles(graph, expected):
    assert _cycle(graph) == expected


def test_the_graph_sees_lazy_imports():
    graph = import_graph()
    # pipeline.from_pretrained imports the folder readers inside the function
    assert "vqdiffusion.convert.diffusers_format" in graph["vqdiffusion.pipeline.pipeline"]
