"""autobatch's modules import one another one way: no circle, lazy imports included.

The layers, bottom up: errors, _units and results; memory; probing; search; then report,
the API and the CLI. A circle means two modules cannot be understood (or tested) apart, and
a lazy import inside a function is a dependency all the same, so it counts here. Imports
under ``if TYPE_CHECKING:`` never run and only name types: they are left out, as
import-linter does with ``exclude_type_checking_imports``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import autobatch

PACKAGE_DIR = Path(autobatch.__file__).parent


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The autobatch modules ``module`` imports anywhere in its code."""
    found: set[str] = set()
    pending = [tree]
    while pending:
        node = pending.pop()
        if _is_type_checking_block(node):
            pending.extend(node.orelse)  # type: ignore[attr-defined]
            continue
        pending.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # "from autobatch import report" names a submodule; "from autobatch import probe"
            # names an attribute of the package.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:  # "import autobatch.x.y" of a name in x
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _module_names()
    known = set(modules)
    return {
        name: _imports(ast.parse(path.read_text(encoding="utf-8")), name,
                       path.name == "__init__.py", known)
        for name, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports as a list of modules (first == last), or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_autobatch_modules_import_each_other_without_a_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_graph_sees_lazy_imports():
    graph = import_graph()
    # cli imports autobatch.demo only inside a function: the graph must still hold it.
    assert "autobatch.demo" in graph["autobatch.cli"]
    assert "autobatch.report" in graph["autobatch.cli"]


def test_the_cycle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_bottom_layers_import_nothing_above_them():
    graph = import_graph()
    assert graph["autobatch.errors"] == set()
    # results sits just above errors, the very bottom (plots only inside plot()).
    assert graph["autobatch.results"] <= {"autobatch.errors", "autobatch.plots"}, graph["autobatch.results"]
    for name, imported in graph.items():
        if name.startswith("autobatch.memory"):
            above = {m for m in imported if m.startswith(("autobatch.probing", "autobatch.search"))}
            assert not above, f"{name} imports {above}"
