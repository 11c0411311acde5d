"""The package's import graph: no cycles between modules, no import that goes up the layers of DESIGN.md, and
environment variables read only by medzoo.runtime.

The graph is built from the source with ``ast``: every ``import`` and ``from ... import`` naming a medzoo
module, at module level and inside functions (an import inside a function is still a dependency; only
``if TYPE_CHECKING:`` blocks, which never run, are left out). A module's import of its own parent packages is
not counted: Python runs those ``__init__`` files first anyway. Imports of the root ``medzoo`` package (its
version and lazy exports) are allowed from anywhere.

Layers, top to bottom (imports go down, or sideways within a layer):
cli (and the demo) -> inference / engine (and export, evaluation, viz, packaging, info) -> planning / data /
transforms -> models / losses / metrics -> io / runtime / accel -> errors / utils / logs.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS = {
    "errors": 0, "utils": 0, "logs": 0,
    "io": 1, "runtime": 1, "accel": 1,
    "models": 2, "losses": 2, "metrics": 2,
    "planning": 3, "data": 3, "transforms": 3,
    "inference": 4, "engine": 4, "export": 4, "evaluation": 4, "viz": 4, "packaging": 4,
    "info": 5,
    "cli": 6, "demo": 6, "__main__": 6,
}

# Cycles in code that other engineers are rewriting today; each entry names its modules and why it is
# still here. Remove an entry when its cycle is gone (the test fails on a stale entry too).
ALLOWED_CYCLES: dict[frozenset[str], str] = {
    frozenset({"medzoo.engine.crossval", "medzoo.inference.ensemble", "medzoo.inference.predictor"}):
        "ensembles (workflow) and the predictor split call each other; fold_dirs and the ensemble's "
        "probability helpers need a home below both",
}


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for path in (SRC / "medzoo").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Dotted names a module's source imports (candidates: ``from a.b import c`` gives ``a.b.c``)."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            names.update(f"{base}.{alias.name}" for alias in node.names)
            names.add(base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the medzoo modules it imports (see the module docstring)."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, (path, is_package) in modules.items():
        targets = set()
        for name in _imported_names(ast.parse(path.read_text(encoding="utf-8")), module, is_package):
            if name.split(".")[0] != "medzoo":
                continue
            target = resolve(name)
            if target and target != "medzoo" and not module.startswith(target + ".") and target != module:
                targets.add(target)
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def _layer(module: str) -> int:
    top = module.split(".")[1]
    assert top in LAYERS, f"{module}: add its package to LAYERS in tests/test_layering.py (and to DESIGN.md)"
    return LAYERS[top]


def test_no_import_cycles_between_modules():
    found = set(cycles(import_graph()))
    new = [sorted(c) for c in found - set(ALLOWED_CYCLES)]
    stale = [sorted(c) for c in set(ALLOWED_CYCLES) - found]
    assert not new, f"import cycles: {new}"
    assert not stale, f"these allowed cycles are gone; remove them from ALLOWED_CYCLES: {stale}"


def test_imports_go_down_the_layers():
    graph = import_graph()
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() if a != "medzoo" for b in targets
                    if _layer(b) > _layer(a))
    assert not upward, f"imports that go up the layers: {upward}"


def test_the_speed_machinery_is_reached_only_through_the_layer_factories_and_the_runtime():
    graph = import_graph()
    doors = ("medzoo.runtime", "medzoo.models.layers.", "medzoo.accel")
    outside = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                     if b.startswith("medzoo.accel") and not a.startswith(doors))
    assert not outside, f"reach medzoo.accel through medzoo.runtime or the layer factories: {outside}"


def test_only_the_runtime_reads_the_environment():
    """Every environment variable is declared and read in medzoo.runtime (and listed in the docs)."""
    readers = []
    for path in (SRC / "medzoo").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if path.name == "runtime.py" and path.parent.name == "medzoo":
            continue
        for line_no, line in enumerate(text.splitlines(), 1):
            # a read; setting a variable for a library (rng.py's CUBLAS_WORKSPACE_CONFIG) is no read
            if re.search(r"os\.environ|os\.getenv", line) and "os.environ.setdefault(" not in line:
                readers.append(f"{path.relative_to(SRC)}:{line_no}: {line.strip()}")
    assert not readers, "read environment variables through medzoo.runtime.env:\n" + "\n".join(readers)


def test_the_graph_sees_function_level_imports_and_the_checker_finds_cycles():
    graph = import_graph()
    assert "medzoo.io.readers" in graph["medzoo.evaluation"]  # imported inside functions only
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset({"a", "b", "c"})]
