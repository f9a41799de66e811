"""The one thread that runs llama.cpp's compute for the whole process.

llama.cpp's CPU backend runs a pass on an OpenMP team of the calling thread, and its
barriers between operations are OpenMP barriers. libgomp spins at a barrier only while
the threads of every team in the process fit the CPUs; once a second thread has run a
pass (and so keeps a team of its own), every barrier sleeps and wakes through the kernel
instead. Measured on two cores: one model decoded 118 tok/s alone and 48 tok/s once a
second, idle model had run a pass on another thread (docs/BENCHMARKS.md). So every
context's passes (each model's steps and warm-up, embeddings) run here, one at a time,
as they would share the cores anyway.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

PREFIX = "shimmy-compute"
_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=PREFIX)


def run(work: Callable[..., T], *args: object) -> T:
    """``work(*args)`` on the compute thread; its result, or its exception raised here."""
    if threading.current_thread().name.startswith(PREFIX):
        return work(*args)
    return _executor.submit(work, *args).result()
