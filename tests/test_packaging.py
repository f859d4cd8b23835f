"""The build: `pip install .` compiles where it can and falls back to plain Python where it cannot.
(The compiled build itself is tested by running the whole suite on it: `scripts/test --compiled`.)"""

from __future__ import annotations

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
