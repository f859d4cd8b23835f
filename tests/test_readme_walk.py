"""README's "One message's walk" stays true: every class method and module function it names
exists, and each walk it lists crosses at most five files of the package (issue 13)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

# The source tree, not the installed package: a compiled install holds no README and its
# modules beside their .so files.
ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tidings"
README = ROOT / "README.md"


def _walk_section() -> str:
    text = README.read_text()
    start = text.index("### One message's walk")
    return " ".join(text[start : text.index("\nTests (", start)].split())


def _definitions() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Class name → its attributes and methods; module file stem → its top-level names."""
    classes: dict[str, set[str]] = {}
    modules: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        top = modules.setdefault(path.stem, set())
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                top.add(node.name)
                members = classes.setdefault(node.name, set())
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        members.add(item.name)
                    elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        members.add(item.target.id)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                top.add(node.name)
    return classes, modules


def test_every_function_the_walk_names_exists() -> None:
    classes, modules = _definitions()
    named = re.findall(r"`([A-Za-z0-9_]+)\.([A-Za-z_]+)`", _walk_section())
    assert len(named) > 15
    for owner, name in named:
        if name == "py":
            continue  # a file name
        if owner in classes:
            assert name in classes[owner], f"README names {owner}.{name}, which {owner} does not define"
        else:
            assert name in modules.get(owner, set()), f"README names {owner}.{name}, which is not defined"


def test_each_walk_crosses_at_most_five_files() -> None:
    files = {path.name for path in PACKAGE.rglob("*.py")}
    walks = re.findall(r"((?:[a-z0-9_]+\.py, )+[a-z0-9_]+\.py)\.", _walk_section())
    assert len(walks) >= 3
    for walk in walks:
        names = walk.split(", ")
        assert len(names) <= 5, walk
        assert set(names) <= files, walk
