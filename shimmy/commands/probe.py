"""``shimmy probe``: load a model, decode one token, report what it cost."""

from __future__ import annotations

import asyncio
import sys
import time

from shimmy.config import Config
from shimmy.engine.loaded import LoadedModel
from shimmy.engine.scheduler import GenerationError, Sampling
from shimmy.errors import ApiError
from shimmy.models.registry import ModelRegistry
from shimmy.sysinfo import format_bytes, process_rss_bytes


def probe(config: Config, name: str) -> int:
    try:
        entry = ModelRegistry(config.discover()).resolve(name)
    except ApiError as exc:
        return _fail(f"{exc.details}. Run 'shimmy discover' to see where shimmy looked.")
    print(f"model:        {entry.name}")
    print(f"path:         {entry.path}")
    meta = entry.info.describe()
    print(f"architecture: {meta['architecture']}")
    print(f"parameters:   {meta['parameters_human']}")
    print(f"quantization: {meta['quantization']}")
    print(f"context:      {meta['context_length']} trained")
    print(f"file size:    {format_bytes(entry.size)}")
    rss_before = process_rss_bytes()
    try:
        model = LoadedModel(entry.name, entry.path, config.engine_settings(),
                            list(entry.loras), entry.info)
    except Exception as exc:
        return _fail(f"the model does not load: {exc}")
    print(f"load time:    {model.load_seconds * 1000:.0f} ms (context {model.n_ctx}, "
          f"{config.parallel} slots, {config.n_threads} threads)")
    print(f"memory:       {format_bytes(process_rss_bytes() - rss_before)} resident for the model")
    try:
        started = time.perf_counter()
        text, tokens = asyncio.run(_one_token(model))
        elapsed = time.perf_counter() - started
    except GenerationError as exc:
        return _fail(f"decoding failed: {exc}")
    finally:
        model.close()
    print(f"first token:  {text!r} ({tokens} prompt tokens, {elapsed * 1000:.0f} ms)")
    print("probe: OK")
    return 0


async def _one_token(model: LoadedModel) -> tuple[str, int]:
    generation = model.generate("Hello", 1, Sampling(temperature=0.0))
    return await generation.text(), generation.prompt_tokens


def _fail(reason: str) -> int:
    print(f"probe: FAILED: {reason}", file=sys.stderr)
    return 1
