"""Tidings' build backend: setuptools', deciding first whether to compile with mypyc.

`pip install .` compiles the package with mypyc where it can (a C compiler and Python's headers are
there) and installs it as plain Python where it cannot: same behaviour, only slower. The choice is
made here because only the backend can ask for mypy as a build requirement, and only when it needs it.
`TIDINGS_COMPILE=1` requires compiling (the build fails rather than fall back), `TIDINGS_COMPILE=0`
never compiles. Editable installs (`pip install -e .`) are never compiled: a compiled module would
shadow its source, and edits to it would silently not take effect.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import tomllib
from pathlib import Path
from typing import Any

from setuptools import build_meta
from setuptools.build_meta import (  # noqa: F401  (the rest of the backend, as setuptools has it)
    build_sdist,
    get_requires_for_build_sdist,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)

# Read by setup.py: "1" compiles, "0" does not; "required" makes a failed compile fail the build.
DECISION = "TIDINGS_BUILD_COMPILED"
MYPY = "mypy>=1.10"  # mypyc comes with it; the build needs it, the installed package does not


def _can_compile() -> str | None:
    """None when this machine can build C extensions for this Python, else why not."""
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler})"
    include = sysconfig.get_paths().get("include", "")
    if not (Path(include) / "Python.h").exists():
        return f"no Python headers (Python.h in {include}; Debian: apt-get install python3-dev)"
    return None


def _decide() -> str:
    wanted = os.environ.get("TIDINGS_COMPILE", "auto").strip().lower()
    if wanted in ("0", "no", "false"):
        return "0"
    if wanted in ("1", "yes", "true"):
        return "required"
    missing = _can_compile()
    if missing is not None:
        print(f"tidings: installing as plain Python: {missing}", file=sys.stderr)
        return "0"
    return "1"


def _runtime_dependencies() -> list[str]:
    """mypyc compiles from the types of everything the package imports: the build needs them."""
    with open("pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    requires: list[str] = build_meta.get_requires_for_build_wheel(config_settings)
    if _decide() == "0":
        return requires
    return [*requires, MYPY, *_runtime_dependencies()]


def build_wheel(
    wheel_directory: str, config_settings: dict[str, Any] | None = None, metadata_directory: str | None = None
) -> str:
    os.environ[DECISION] = _decide()
    return str(build_meta.build_wheel(wheel_directory, config_settings, metadata_directory))


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    return list(build_meta.get_requires_for_build_editable(config_settings))


def build_editable(
    wheel_directory: str, config_settings: dict[str, Any] | None = None, metadata_directory: str | None = None
) -> str:
    os.environ[DECISION] = "0"
    return str(build_meta.build_editable(wheel_directory, config_settings, metadata_directory))
