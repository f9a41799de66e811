"""Loads llama.cpp (libllama, its ggml CPU variants) and shimmy's engine extension once,
on first use.

Importing it maps libllama and its ggml backends; commands that never touch a
model (``--help``, ``list``) do not pay for that.

The llama.cpp libraries live in llama-cpp-python's ``llama_cpp/lib`` when shimmy runs
from a virtual environment, and in ``llama_cpp/lib`` inside the one-folder build
(``sys._MEIPASS``). The single-file binary, which unpacks itself at every launch, carries
them as one archive instead, unpacked on first use into ``~/.cache/shimmy/llama-<hash>``
(or a temporary folder when there is no writable cache) and reused by later launches.
A portable build's CPU variants
(``libggml-cpu-<variant>.so``) sit beside them in the bundle, and in ``site-packages/bin``
where llama-cpp-python's wheel installs them; ``SHIMMY_BACKEND_DIR`` names another folder
to load them from (to mask a variant, or to try another build of them). llama.cpp's RPC
backend, ``libggml-rpc.so``, is one more module there (``SHIMMY_RPC_BACKEND`` names one
elsewhere).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import re
import sys
import tarfile
import tempfile
import threading
from pathlib import Path
from types import ModuleType

BACKEND_DIR_ENV = "SHIMMY_BACKEND_DIR"
# a libggml-rpc.so to load where none sits beside the CPU variants (docs/RPC.md)
RPC_BACKEND_ENV = "SHIMMY_RPC_BACKEND"
# "ggml" leaves the output layer's product to llama.cpp (see the engine's output_head.h)
OUTPUT_HEAD_ENV = "SHIMMY_OUTPUT_HEAD"
BUILD_INFO_FILE = "llama_build.json"  # written into the binary by build.spec
LIBS_ARCHIVE = "llama_cpp_libs.tar.xz"  # the single-file binary's llama.cpp libraries
UNPACKED_PRELOADS = ("libgomp.so.1", "libllama.so.0")  # what the engine links, from there

_lock = threading.Lock()
_module: ModuleType | None = None
_verbose = False
_tiled_kernel = True


class BackendError(RuntimeError):
    """llama.cpp found no CPU backend to run on."""


def set_verbose(verbose: bool) -> None:
    global _verbose
    _verbose = verbose


def set_deterministic(deterministic: bool) -> None:
    """Before ``load``: the invariant profile needs llama.cpp's tiled K-quant kernel off
    for the whole process (ggml reads its switch once)."""
    global _tiled_kernel
    _tiled_kernel = not deterministic


def load() -> ModuleType:
    global _module
    with _lock:
        if _module is None:
            _preload_unpacked()
            # llama.cpp's tiled K-quant matrix kernel, which it takes from 8 rows on,
            # rounds a row otherwise than the kernel for fewer rows; without it a row's
            # logits do not depend on how many rows share its pass (BatchEngine.warm_up
            # checks), so a seed's text does not depend on other requests. The variable,
            # where set, wins.
            os.environ.setdefault("GGML_CPU_TILED_MM", "1" if _tiled_kernel else "0")
            from shimmy.engine import _engine

            directory = backend_dir()
            if not _engine.init_backend(_verbose, str(directory) if directory else None):
                raise BackendError(
                    f"llama.cpp loaded no CPU backend from {directory or 'anywhere'}: "
                    "no libggml-cpu-*.so there runs on this CPU")
            if os.environ.get(RPC_BACKEND_ENV):
                _engine.load_rpc_backend(os.environ[RPC_BACKEND_ENV])
            _module = _engine
        return _module


def output_head_wanted() -> bool:
    """Whether engines may compute the output layer's product themselves (they still
    check it against llama.cpp's at load, see ``BatchEngine.warm_up``)."""
    return os.environ.get(OUTPUT_HEAD_ENV) != "ggml"


def output_head_obstacle() -> str | None:
    """Why no model's output product can be shimmy's on this machine, or None."""
    if not output_head_wanted():
        return f"{OUTPUT_HEAD_ENV}=ggml"
    if not load().output_head_supported():
        return "this CPU has no AVX-512 VNNI"
    return None


def bundle_dir() -> Path | None:
    """The unpacked bundle when shimmy runs as the PyInstaller binary, else None."""
    bundle = getattr(sys, "_MEIPASS", None)
    return Path(bundle) if bundle else None


def lib_dir() -> Path | None:
    """The folder holding libllama and ggml's libraries."""
    bundle = bundle_dir()
    if bundle is not None:
        inside = bundle / "llama_cpp" / "lib"
        return inside if inside.is_dir() else unpacked_lib_dir(bundle / "shimmy" / LIBS_ARCHIVE)
    package = llama_cpp_package()
    return package / "lib" if package else None


def unpacked_lib_dir(archive: Path) -> Path:
    """The single-file binary's libraries, unpacked once per build and then reused."""
    key = llama_build().get("libs_sha256", "unknown")[:16]
    temporary = Path(tempfile.gettempdir()) / f"shimmy-{os.getuid()}"
    problems = []
    for base in (*_cache_home(), temporary):
        target = base / f"llama-{key}"
        if (target / ".complete").is_file():
            return target
        try:
            return _unpack(archive, target)
        except (OSError, tarfile.TarError) as exc:
            problems.append(f"{target}: {exc}")
    raise BackendError("cannot unpack llama.cpp's libraries: " + "; ".join(problems))


def _cache_home() -> list[Path]:
    if os.environ.get("XDG_CACHE_HOME"):
        return [Path(os.environ["XDG_CACHE_HOME"]) / "shimmy"]
    try:
        return [Path.home() / ".cache" / "shimmy"]
    except RuntimeError:  # no HOME and no passwd entry
        return []


def _unpack(archive: Path, target: Path) -> Path:
    # unpack beside the target and rename: a launch beside this one never sees half of it
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    with tarfile.open(archive) as tar:
        tar.extractall(partial, filter="data")
    (partial / ".complete").touch()
    try:
        partial.rename(target)
    except OSError:
        if not (target / ".complete").is_file():
            raise
        _remove(partial)  # another launch got there first
    return target


def _remove(directory: Path) -> None:
    for child in directory.iterdir():
        child.unlink()
    directory.rmdir()


def _preload_unpacked() -> None:
    """Map the unpacked libllama and OpenMP runtime, so that the engine's links to them
    resolve to these copies (the engine's output head runs on OpenMP too)."""
    bundle = bundle_dir()
    if bundle is None or (bundle / "llama_cpp" / "lib").is_dir():
        return
    directory = lib_dir()
    if directory is None:
        return
    for name in UNPACKED_PRELOADS:
        if (directory / name).is_file():
            ctypes.CDLL(str(directory / name), mode=ctypes.RTLD_GLOBAL)


def backend_dir() -> Path | None:
    """Where ggml's loadable CPU variants are looked for."""
    override = os.environ.get(BACKEND_DIR_ENV)
    if override:
        return Path(override)
    package = None if bundle_dir() else llama_cpp_package()
    if package is not None and any((package.parent / "bin").glob("libggml-cpu-*.so")):
        return package.parent / "bin"  # where the wheel installs ggml's backend modules
    return lib_dir()


def llama_cpp_package() -> Path | None:
    """llama-cpp-python's package folder, found without importing it (it pulls in numpy)."""
    try:
        spec = importlib.util.find_spec("llama_cpp")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def llama_build() -> dict[str, str]:
    """The llama.cpp this shimmy carries: ``package`` (llama-cpp-python), ``commit``, ``number``.

    Read from files, never by importing llama_cpp; values not found are ``unknown``.
    """
    info = {"package": "unknown", "commit": "unknown", "number": "unknown"}
    bundle = bundle_dir()
    if bundle is not None:
        with contextlib.suppress(OSError, ValueError):
            info.update(json.loads((bundle / "shimmy" / BUILD_INFO_FILE).read_text()))
        return info
    package = llama_cpp_package()
    if package is not None:
        info.update(_read_build_files(package))
    return info


def _read_build_files(package: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    version = _search(package / "__init__.py", r'__version__\s*=\s*"([^"]+)"')
    if version:
        found["package"] = version
    # llama-cpp-python installs llama.cpp's CMake package config beside llama_cpp
    config = package.parent / "lib" / "cmake" / "llama" / "llama-config.cmake"
    for key, variable in (("commit", "LLAMA_BUILD_COMMIT"), ("number", "LLAMA_BUILD_NUMBER")):
        value = _search(config, rf"set\({variable}\s+([^)\s]+)\)")
        if value:
            found[key] = value
    return found


def _search(path: Path, pattern: str) -> str | None:
    try:
        match = re.search(pattern, path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None
    return match.group(1) if match else None
