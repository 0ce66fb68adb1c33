"""The package's layering holds: dependencies run one way and no module imports itself in a circle.

The data path reads top to bottom: cam (CAM maths, engine) <- imaging (files, geometry) <- models
<- ct (a CT in, maps out) <- synthetic <- {cohort, mrml, evaluation} <- cli. A module may import
its own sub-package and the sub-packages below it, never one above or beside it. Imports are read
from the source (an AST scan, function-level imports included), so a lazy import counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "SegHiResCAM" / "seghirescam"

# What each sub-package (or top-level module) may import, besides itself.
BASE = {"atomic", "lazy"}
ALLOWED: dict[str, set[str]] = {
    "atomic": set(),
    "lazy": set(),
    "cam": BASE,
    "imaging": BASE | {"cam"},
    "models": BASE | {"cam", "imaging"},
    "ct": BASE | {"cam", "imaging", "models"},
    "synthetic": BASE | {"cam", "imaging", "models", "ct"},
    "cohort": BASE | {"cam", "imaging", "models", "ct", "synthetic"},
    "mrml": BASE | {"cam", "imaging", "models", "ct", "synthetic"},
    "evaluation": BASE | {"cam", "imaging", "models", "ct", "synthetic"},
    "cli": BASE | {"cam", "imaging", "models", "ct", "synthetic", "cohort", "evaluation"},
}
# Only the Slicer side may import Slicer, VTK or Qt; nothing in the package imports qt at all.
SLICER_MODULES = ("slicer", "vtk", "qt", "ctk", "PythonQt")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks (imports for annotations only)."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside |= {id(child) for statement in node.body for child in ast.walk(statement)}
    return inside


def _imports(path: Path, *, runtime_only: bool = False) -> list[tuple[str, int]]:
    """Absolute names of every module imported by a file (relative imports resolved), with line numbers.

    ``runtime_only`` leaves out imports under ``if TYPE_CHECKING:``, which never run.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skipped = _type_checking_nodes(tree) if runtime_only else set()
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((module, node.lineno))
            # "from seghirescam.cam import engine" imports the module seghirescam.cam.engine
            found += [(f"{module}.{alias.name}", node.lineno) for alias in node.names
                      if (PACKAGE.parent / Path(*f"{module}.{alias.name}".split("."))).with_suffix(".py").is_file()]
    return found


def _subpackage(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else ""


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_subpackage_is_known():
    for path in SOURCES:
        name = _module_name(path)
        if name != "seghirescam":
            assert _subpackage(name) in ALLOWED, f"{name}: add its sub-package to ALLOWED in this test"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_data_path(path):
    name = _module_name(path)
    if name == "seghirescam":
        return  # the public API's lazy table names modules as strings, it imports none at import time
    own = _subpackage(name)
    for imported, line in _imports(path):
        root = imported.split(".")[0]
        assert root not in ("qt", "ctk"), f"{name}:{line} imports {imported}: the package never imports qt"
        if root in SLICER_MODULES:
            assert own == "mrml", f"{name}:{line} imports {imported}: only seghirescam.mrml may import Slicer/VTK"
        if root != "seghirescam" or imported == "seghirescam":
            continue
        target = _subpackage(imported)
        assert target == own or target in ALLOWED[own], (
            f"{name}:{line} imports {imported}: {own} may import only {sorted(ALLOWED[own])}")


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SOURCES}
    graph = {}
    for name, path in modules.items():
        if path.name == "__init__.py":
            continue  # package re-exports are not dependencies of the modules they re-export
        graph[name] = {m for m, _ in _imports(path, runtime_only=True)
                       if m in modules and modules[m].name != "__init__.py"}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), or a module importing itself."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
