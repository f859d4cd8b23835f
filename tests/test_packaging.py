"""The build: `pip install .` compiles where it can and falls back to plain Python where it cannot.
(The compiled build itself is tested by running the whole suite on it: `scripts/test --compiled`.)"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_wheel(tmp_path: Path, **env: str) -> tuple[Path, str]:
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv*", "build", "*.egg-info", "__pycache__", "*.so"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), "-v", "."],
        cwd=source,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = tmp_path.glob("tidings-*.whl")
    return wheel, done.stdout + done.stderr


def test_without_a_c_compiler_the_wheel_is_plain_python_and_says_why(tmp_path: Path) -> None:
    wheel, output = build_wheel(tmp_path, CC="no-such-compiler", TIDINGS_COMPILE="auto")
    assert wheel.name.endswith("-py3-none-any.whl")
    assert "installing as plain Python: no C compiler (no-such-compiler)" in output
    names = zipfile.ZipFile(wheel).namelist()
    assert "tidings/hub.py" in names and not [name for name in names if name.endswith(".so")]


def test_compiling_can_be_turned_off(tmp_path: Path) -> None:
    wheel, _ = build_wheel(tmp_path, TIDINGS_COMPILE="0")
    assert wheel.name.endswith("-py3-none-any.whl")


def test_no_await_in_a_finally_block() -> None:
    """mypyc mishandles an await inside `finally` (mypyc/mypyc#1114 swallowed exceptions there; with
    mypy 2.4, which has that fix, we saw the reverse): compiled, an exception raised and suppressed
    in an await there came out again after the block. Clean-up that awaits goes after a
    `try`/`except BaseException` that keeps the exception to re-raise (see `server.serve`)."""
    found = []
    for path in sorted((ROOT / "tidings").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Try | ast.TryStar):
                for inner in (each for stmt in node.finalbody for each in ast.walk(stmt)):
                    if isinstance(inner, ast.Await | ast.AsyncWith | ast.AsyncFor):
                        found.append(f"{path.relative_to(ROOT)}:{inner.lineno}")
    assert not found
