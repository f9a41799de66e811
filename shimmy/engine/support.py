"""Whether this llama.cpp knows a model's architecture, asked before anything loads.

llama.cpp has no call that lists its architectures. It reads ``general.architecture``
first when it opens a GGUF, so a GGUF holding nothing but that key is refused with
"unknown model architecture" exactly when it does not know the name, and otherwise
for a missing key further on. That takes well under a millisecond, against a second for
the vocabulary of a real model.
"""

from __future__ import annotations

import functools
import os
import re
import struct
import tempfile

from shimmy.engine import library

_GGUF_STRING = 8  # GGUF's value type of a string


class UnsupportedModel(RuntimeError):
    """A model this llama.cpp cannot load, whatever the file's state."""


def llama_cpp_words() -> str:
    """This llama.cpp, as a person quoting it in a bug report would: commit and package."""
    build = library.llama_build()
    return f"llama.cpp {build['commit']} (llama-cpp-python {build['package']})"


def check_architecture(architecture: str) -> None:
    """Raise ``UnsupportedModel`` if this llama.cpp does not know ``architecture``."""
    if (problem := unsupported_architecture(architecture)) is not None:
        raise UnsupportedModel(problem)


def unsupported_architecture(architecture: str) -> str | None:
    """Why a model of ``architecture`` cannot load here, or None if llama.cpp knows it."""
    if architecture_known(architecture):
        return None
    return f"its architecture '{architecture}' is not one this {llama_cpp_words()} supports"


def tells_of_unsupported_architecture(text: str) -> bool:
    """Whether an error's text (a load failure passed on) is ``unsupported_architecture``'s."""
    return re.search(r"architecture '[^']*' is not one this llama\.cpp ", text) is not None


@functools.cache
def architecture_known(architecture: str) -> bool:
    """Whether llama.cpp knows ``architecture``; True where it cannot be asked (no
    writable temporary folder): then the load itself tells."""
    engine = library.load()
    try:
        descriptor, path = tempfile.mkstemp(prefix="shimmy-arch-", suffix=".gguf")
    except OSError:
        return True
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(_architecture_only_gguf(architecture))
        problem = engine.vocabulary_problem(path) or ""
    finally:
        os.unlink(path)
    return "unknown model architecture" not in problem


def _architecture_only_gguf(architecture: str) -> bytes:
    """A GGUF (version 3, no tensors) whose one key is ``general.architecture``."""
    def text(value: str) -> bytes:
        data = value.encode()
        return struct.pack("<Q", len(data)) + data

    return (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + text("general.architecture")
            + struct.pack("<I", _GGUF_STRING) + text(architecture))
