"""Every llama.cpp pass of the process runs on one thread (``shimmy.engine.compute``).

llama.cpp's CPU backend gives each thread that runs a pass an OpenMP team of its own,
and libgomp stops spinning at barriers once the teams' threads outnumber the cores: a
second model's passes on a second thread made both models decode 2.5 times slower on two
cores. The teams' worker threads are native threads, not Python ones, so counting those
tells how many threads have run passes.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

from shimmy.engine import compute
from shimmy.engine.loaded import EngineSettings, LoadedModel
from shimmy.engine.scheduler import Sampling

SETTINGS = EngineSettings(ctx=256, parallel=2, threads=2)


def native_threads() -> int:
    """Threads of this process that Python did not start (OpenMP's among them)."""
    return len(os.listdir("/proc/self/task")) - threading.active_count()


def generate(model: LoadedModel, prompt: str) -> str:
    async def text() -> str:
        return await model.generate(prompt, 8, Sampling(temperature=0)).text()

    return asyncio.run(text())


def test_passes_of_two_models_run_on_the_one_compute_thread(model_path: Path) -> None:
    first = LoadedModel("first", model_path, SETTINGS)
    try:
        assert generate(first, "The capital of France is")
        before = native_threads()
        second = LoadedModel("second", model_path, SETTINGS)
        try:
            assert generate(second, "The capital of Italy is")
            assert generate(first, "The capital of Spain is")
            # a second thread running passes would have brought an OpenMP team along
            assert native_threads() == before
        finally:
            second.close()
    finally:
        first.close()


def test_work_runs_on_the_compute_thread_and_its_errors_come_back() -> None:
    assert compute.run(lambda: threading.current_thread().name).startswith(compute.PREFIX)
    # called on the compute thread itself, it runs in place instead of waiting on itself
    assert compute.run(compute.run, lambda: 7) == 7

    def fails() -> None:
        raise ValueError("from the compute thread")

    try:
        compute.run(fails)
    except ValueError as error:
        assert str(error) == "from the compute thread"
    else:
        raise AssertionError("the error was lost")
