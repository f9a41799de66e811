"""Loads the compiled llama.cpp boundary once, on first use.

Importing it maps libllama and its ggml backends; commands that never touch a
model (``--help``, ``list``) do not pay for that.
"""

from __future__ import annotations

import threading
from types import ModuleType

_lock = threading.Lock()
_module: ModuleType | None = None
_verbose = False


def set_verbose(verbose: bool) -> None:
    global _verbose
    _verbose = verbose


def load() -> ModuleType:
    global _module
    with _lock:
        if _module is None:
            from shimmy.engine import _sampler

            _sampler.init_backend(_verbose)
            _module = _sampler
        return _module
