"""Model load progress from llama.cpp's progress callback, and models it cannot load."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
from gguf_factory import write_gguf

from shimmy.commands.term import LoadingLine
from shimmy.engine.loaded import EngineSettings, LoadedModel, LoadProgress
from shimmy.engine.pool import ModelPool
from shimmy.engine.support import UnsupportedModel, architecture_known
from shimmy.models.gguf import read_gguf_info
from shimmy.models.registry import ModelRegistry

SMALL = EngineSettings(ctx=512, parallel=1, threads=1)


def test_the_callbacks_fractions_rise_to_one(model_path: Path) -> None:
    progress = LoadProgress()
    assert progress.fraction == 0.0  # before the load begins
    model = LoadedModel("gemma", model_path, SMALL, progress=progress)
    try:
        fractions = model.load_fractions
        # one call per tensor (the embedded model has hundreds), then 1.0
        assert len(fractions) > 100, fractions
        assert fractions[0] < 0.5 and fractions[-1] == 1.0
        assert fractions == sorted(fractions)
        assert progress.fraction == 1.0
    finally:
        model.close()


def test_the_pool_reports_the_fraction_while_it_loads(model_path: Path) -> None:
    registry = ModelRegistry.from_config(model_path=model_path, env={})
    name = registry.resolve(None).name

    async def load_and_watch() -> tuple[list[float | None], LoadedModel]:
        pool = ModelPool(registry, SMALL)
        assert pool.load_fraction(name) is None and pool.state(name).progress is None
        loading = asyncio.create_task(pool.get(None))
        seen: list[float | None] = []
        while not loading.done():
            await asyncio.sleep(0)  # the load runs in a thread; the loop stays free
            state = pool.state(name)
            if state.state == "loading":
                seen.append(state.progress)
                await asyncio.sleep(0.005)
        model = await loading
        assert pool.state(name).state == "loaded" and pool.load_fraction(name) is None
        await pool.aclose()
        return seen, model

    seen, model = asyncio.run(load_and_watch())
    assert seen and None not in seen
    assert seen == sorted(seen) and all(0.0 <= f <= 1.0 for f in seen), seen
    assert model.load_fractions[-1] == 1.0


def test_an_architecture_llama_cpp_does_not_know_is_named(tmp_path: Path) -> None:
    assert architecture_known("llama") and architecture_known("gemma3")
    assert not architecture_known("notanarch")
    path = write_gguf(tmp_path / "future.gguf", arch="notanarch")
    with pytest.raises(UnsupportedModel) as raised:
        LoadedModel("future", path, SMALL, info=read_gguf_info(path))
    words = str(raised.value)
    assert "'notanarch'" in words and "llama.cpp" in words and "llama-cpp-python 0.3." in words


class _Terminal(io.StringIO):
    encoding = "ascii"

    def isatty(self) -> bool:
        return True


def test_the_loading_line_shows_a_percentage_when_it_has_one() -> None:
    terminal = _Terminal()
    fractions = iter([None, 0.42])
    with LoadingLine("gemma", terminal, fraction=lambda: next(fractions, 1.0)) as line:
        line._draw(1)
    drawn = terminal.getvalue()
    assert drawn.startswith("\r| loading gemma... 0.0 s")  # no fraction yet: time only
    assert "\r/ loading gemma...  42% " in drawn
    plain = _Terminal()
    with LoadingLine("gemma", plain):
        pass
    assert "%" not in plain.getvalue()
