"""Builds the Cython hot loop against the llama.cpp that llama-cpp-python installed.

The extension links ``libllama`` from ``llama_cpp/lib`` and finds it at run time
through ``$ORIGIN``-relative run paths, so no LD_LIBRARY_PATH is needed.
"""

import importlib.util
import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).resolve().parent
ENGINE_DIR = HERE / "shimmy" / "engine"


def llama_cpp_dir() -> Path:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llama-cpp-python==0.3.36 must be installed before building shimmy")
    return Path(next(iter(spec.submodule_search_locations)))


def run_paths(lib_dir: Path) -> list[str]:
    # a frozen bundle keeps the libraries beside the extension; an installed wheel
    # sits next to llama_cpp in site-packages; an editable install sits in the source tree
    from_source = os.path.relpath(lib_dir, ENGINE_DIR)
    return ["$ORIGIN", "$ORIGIN/../../llama_cpp/lib", f"$ORIGIN/{from_source}"]


def include_dir(package: Path) -> Path:
    # llama-cpp-python installs its headers as site-packages/include
    for candidate in (package.parent / "include", package / "include"):
        if (candidate / "llama.h").is_file():
            return candidate
    raise SystemExit(f"llama.h not found beside {package}: reinstall llama-cpp-python==0.3.36")


def extension() -> Extension:
    package = llama_cpp_dir()
    lib_dir = package / "lib"
    return Extension(
        "shimmy.engine._engine",
        ["shimmy/engine/_engine.pyx"],
        language="c++",
        include_dirs=[str(include_dir(package)), str(ENGINE_DIR)],
        library_dirs=[str(lib_dir)],
        libraries=["llama", "ggml", "ggml-base"],  # ggml: loading the CPU variants
        runtime_library_dirs=run_paths(lib_dir),
        # OpenMP: output_head.h splits its product over the threads ggml's own OpenMP
        # runtime (the same libgomp) already keeps
        extra_compile_args=["-O2", "-std=c++17", "-fopenmp"],
        extra_link_args=["-fopenmp"],
    )


setup(ext_modules=cythonize([extension()], language_level=3, quiet=True))
