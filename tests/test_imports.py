"""The package's shape: its import graph, read from the source with `ast` (every import
counts, those under TYPE_CHECKING and inside functions too)."""

from __future__ import annotations

import ast
from pathlib import Path

import tidings

PACKAGE = Path(tidings.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each module of the package → the modules of the package it imports."""
    files = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                for alias in node.names:  # `from tidings.web import info` imports a module
                    submodule = f"{base}.{alias.name}"
                    imported.add(submodule if submodule in files else base)
        graph[name] = {module for module in imported if module in files and module != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path that ends where it starts, or [] when there is none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str]:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return []
        path.append(module)
        for imported in sorted(graph[module]):
            cycle = visit(imported)
            if cycle:
                return cycle
        path.pop()
        done.add(module)
        return []

    for module in sorted(graph):
        cycle = visit(module)
        if cycle:
            return cycle
    return []


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for imported in graph[todo.pop()] - seen:
            seen.add(imported)
            todo.append(imported)
    return seen


def test_the_graph_is_read_from_every_kind_of_import() -> None:
    graph = import_graph()
    assert "tidings.web.http" in graph["tidings.web.longpoll"]  # from tidings.web.http import ...
    assert "tidings.web.info" in graph["tidings.web.app"]  # from tidings.web import info
    assert "tidings.brokers.memory" in graph["tidings.brokers"]  # inside a function
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_the_package_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_core_imports_nothing_from_the_web_layer() -> None:
    graph = import_graph()
    brokers = [name for name in graph if name.startswith("tidings.brokers")]
    core = ["tidings.hub", "tidings.relay", "tidings.sequencer", *brokers]
    for module in core:
        web = sorted(name for name in reachable(graph, module) if name.startswith("tidings.web"))
        assert not web, f"{module} imports {web}"


def test_only_the_server_imports_the_application() -> None:
    importers = sorted(name for name, imported in import_graph().items() if "tidings.web.app" in imported)
    assert importers == ["tidings.server"]
