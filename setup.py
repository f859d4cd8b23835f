"""The compiled half of the build: which modules mypyc compiles, when build_support/tidings_build.py
decided to compile (everything else is in pyproject.toml)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

# Not compiled: the entry point (nothing to gain), the Python client (mypyc has no async
# generators), the errors (mypyc's native exception classes lose their class-level `code`) and
# the static files' package marker (empty).
PURE = {"tidings/__main__.py", "tidings/client.py", "tidings/errors.py", "tidings/static/__init__.py"}


def compiled_modules() -> list[str]:
    return sorted(str(path) for path in Path("tidings").rglob("*.py") if str(path) not in PURE)


class BuildCompiled(build_ext):
    """Builds the extensions on every core and, unless compiling was required, falls back to
    plain Python when the compiler fails (the .py files are in the wheel either way)."""

    def initialize_options(self) -> None:
        super().initialize_options()
        self.parallel = os.cpu_count() or 1

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            if os.environ.get("TIDINGS_BUILD_COMPILED") == "required":
                raise
            for output in self.get_outputs():
                Path(output).unlink(missing_ok=True)
            print(f"tidings: compiling failed ({exc}); installing as plain Python", file=sys.stderr)


def ext_modules() -> list[Any]:
    if os.environ.get("TIDINGS_BUILD_COMPILED", "0") == "0":
        return []
    from mypyc.build import mypycify

    return list(mypycify(compiled_modules(), opt_level="3", group_name="tidings"))


setup(ext_modules=ext_modules(), cmdclass={"build_ext": BuildCompiled})
