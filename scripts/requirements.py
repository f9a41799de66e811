#!/usr/bin/env python3
"""Print shimmy's requirements from pyproject.toml, one a line, for ``pip install -r``:
its dependencies but llama-cpp-python (scripts/llama_wheel.py builds that one), and the
optional dependencies of each extra named.

    requirements.py [EXTRA ...]      # setup.sh: model test; build_binary.sh: dist

Standard library only.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def requirements(extras: list[str]) -> list[str]:
    with PYPROJECT.open("rb") as file:
        project = tomllib.load(file)["project"]
    optional = project["optional-dependencies"]
    if unknown := [name for name in extras if name not in optional]:
        raise SystemExit(f"pyproject.toml has no extra named {', '.join(unknown)}")
    wanted = [*project["dependencies"], *(req for name in extras for req in optional[name])]
    return [req for req in wanted if not req.startswith("llama-cpp-python")]


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1:])))
