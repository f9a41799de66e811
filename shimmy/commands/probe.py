"""``shimmy probe``: load a model, decode one token, report what it cost."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from shimmy.commands.advice import load_failure_hint, model_path_screen, unknown_model_hint
from shimmy.commands.term import LoadingLine, paint, print_json
from shimmy.config import Config
from shimmy.engine import library
from shimmy.engine.loaded import LoadedModel, LoadProgress
from shimmy.engine.scheduler import GenerationError, Sampling
from shimmy.errors import ApiError
from shimmy.models.discovery import ModelEntry
from shimmy.models.registry import ModelRegistry
from shimmy.sysinfo import format_bytes, process_rss_bytes


class ProbeFailure(Exception):
    def __init__(self, reason: str, hint: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.hint = hint


def probe(config: Config, name: str, as_json: bool = False) -> int:
    facts: dict[str, Any] = {"ok": False, "model": name}
    try:
        _run(config, name, facts, as_json)
    except ProbeFailure as failure:
        facts.update(error=failure.reason, hint=failure.hint)
        if as_json:
            print_json(facts)
        print(f"probe: {paint('FAILED', 'red', sys.stderr)}: {failure.reason}", file=sys.stderr)
        print(f"  {failure.hint}", file=sys.stderr)
        return 1
    if as_json:
        print_json(facts)
    else:
        print(f"probe: {paint('OK', 'green')}")
    return 0


def _run(config: Config, name: str, facts: dict[str, Any], as_json: bool) -> None:
    report = config.discover()
    if screen := model_path_screen(config.model_path, report):
        raise ProbeFailure(*screen)
    try:
        entry = ModelRegistry(report).resolve(name)
    except ApiError as exc:
        raise ProbeFailure(exc.details, unknown_model_hint(report)) from None
    facts.update(_header_facts(entry))
    if not as_json:
        _print_header(facts)
    model = _load(config, entry, facts)
    facts["output_head"] = _head_words(model)
    facts["engine_profile"] = model.profile.describe() if model.profile else None
    if not as_json:
        print(f"load time:    {facts['load_ms']:.0f} ms (context {facts['context']}, "
              f"{facts['slots']} slots, {facts['threads']} threads)")
        print(f"memory:       {format_bytes(facts['memory_bytes'])} resident for the model")
        if facts["kv_cache_bytes"]:
            print(f"kv cache:     {format_bytes(facts['kv_cache_bytes'])} for "
                  f"{facts['slots']} × {facts['context']} cells, resident as they fill")
        print(f"output head:  {facts['output_head']}")
        if model.profile:
            print(f"profile:      {model.profile.words()}")
        if config.rpc:
            _print_placement(model.placement)
    try:
        started = time.perf_counter()
        text, tokens = asyncio.run(_one_token(model))
        elapsed_ms = (time.perf_counter() - started) * 1000
    except GenerationError as exc:
        raise ProbeFailure(f"decoding failed: {exc}",
                           load_failure_hint(entry.name, suggest_probe=False)) from None
    except ApiError as exc:  # e.g. an embedding model, which loads but writes no text
        raise ProbeFailure(exc.details, "Embedding models serve POST /v1/embeddings; "
                           "probe decodes text, so it cannot test them.") from None
    finally:
        model.close()
    facts.update(ok=True, first_token=text, prompt_tokens=tokens, first_token_ms=elapsed_ms)
    if not as_json:
        print(f"first token:  {text!r} ({tokens} prompt tokens, {elapsed_ms:.0f} ms)")


def _head_words(model: LoadedModel) -> str:
    """Who computes this model's logits, and why not shimmy's output head if not."""
    engine = model.engine
    if engine is not None and engine.own_head:
        return "shimmy's (its logits equal llama.cpp's bit for bit at load)"
    obstacle = library.output_head_obstacle()
    if obstacle is None:
        differed = engine is not None and engine.head_checks[2] > 0
        obstacle = ("its logits differed from llama.cpp's at load" if differed
                    else "the output matrix is not a plain Q8_0 one")
    return f"llama.cpp's ({obstacle})"


def _header_facts(entry: ModelEntry) -> dict[str, Any]:
    meta = entry.info.describe()
    return {
        "model": entry.name,
        "path": str(entry.path),
        "architecture": meta["architecture"],
        "parameters": meta["parameters_human"],
        "quantization": meta["quantization"],
        "context_trained": meta["context_length"],
        "file_size": entry.size,
    }


def _print_header(facts: dict[str, Any]) -> None:
    print(f"model:        {facts['model']}")
    print(f"path:         {facts['path']}")
    print(f"architecture: {facts['architecture']}")
    print(f"parameters:   {facts['parameters']}")
    print(f"quantization: {facts['quantization']}")
    print(f"context:      {facts['context_trained']} trained")
    print(f"file size:    {format_bytes(facts['file_size'])}")


def _load(config: Config, entry: ModelEntry, facts: dict[str, Any]) -> LoadedModel:
    rss_before = process_rss_bytes()
    try:
        progress = LoadProgress()
        with LoadingLine(entry.name, enabled=not config.verbose,
                         fraction=lambda: progress.fraction):
            model = LoadedModel(entry.name, entry.path, config.engine_settings(),
                                list(entry.loras), entry.info, progress)
    except Exception as exc:
        raise ProbeFailure(f"the model does not load: {exc}",
                           load_failure_hint(entry.name, False, str(exc))) from None
    facts.update(placement=model.placement, rpc=list(config.rpc))
    facts.update(load_ms=model.load_seconds * 1000, context=model.n_ctx,
                 slots=config.parallel, threads=config.n_threads,
                 memory_bytes=process_rss_bytes() - rss_before,
                 # in host memory, handed back after the warm-up (cache_pages.h)
                 kv_cache_bytes=model.engine.cache_released if model.engine else 0)
    return model


def _print_placement(placement: dict[str, Any]) -> None:
    """Where the layers went: llama.cpp's buffer sizes per device (docs/RPC.md)."""
    layers = placement["layers"]
    if layers:
        print(f"layers:       {layers['offloaded']} of {layers['of']} on the RPC workers, "
              "the rest on this CPU")
    for device, sizes in placement["buffers_mib"].items():
        words = ", ".join(f"{kind} {mib:.1f} MiB" for kind, mib in sizes.items())
        print(f"  {device}: {words}")


async def _one_token(model: LoadedModel) -> tuple[str, int]:
    generation = model.generate("Hello", 1, Sampling(temperature=0.0))
    return await generation.text(), generation.prompt_tokens
