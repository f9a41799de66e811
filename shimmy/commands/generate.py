"""``shimmy generate``: run the engine in this process and stream to stdout."""

from __future__ import annotations

import argparse
import sys

from shimmy.api import params
from shimmy.commands.advice import load_failure_hint, unknown_model_hint
from shimmy.commands.term import LoadingLine, error
from shimmy.config import Config
from shimmy.engine.loaded import LoadedModel
from shimmy.engine.pool import ModelPool
from shimmy.engine.scheduler import Generation, GenerationError
from shimmy.errors import ApiError
from shimmy.models.discovery import DiscoveryReport
from shimmy.models.registry import ModelRegistry


async def generate(config: Config, args: argparse.Namespace) -> int:
    report = config.discover()
    pool = ModelPool(ModelRegistry(report), config.engine_settings())
    try:
        request = {"prompt": args.prompt, "max_tokens": args.max_tokens,
                   "temperature": args.temperature, "seed": args.seed}
        sampling = params.sampling(request)
        max_tokens = params.integer(request, "max_tokens", 100, 1, 1_000_000)
        model = await _load(pool, args.model, config.verbose)
        generation = model.generate(args.prompt, max_tokens, sampling)
        async for piece in generation:  # each piece as soon as the engine hands it over
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        if config.verbose:
            print(speed_line(generation, model), file=sys.stderr)
        return 0
    except ApiError as exc:
        sys.stdout.flush()
        error(f"{exc.message}: {exc.details}", _hint(exc, args.model, report))
        return 1
    except GenerationError as exc:
        error(f"generation failed: {exc}", load_failure_hint(args.model))
        return 1
    finally:
        pool.close()


async def _load(pool: ModelPool, name: str, verbose: bool) -> LoadedModel:
    entry = pool.registry.resolve(name)
    if entry.name in pool.loaded:
        return pool.loaded[entry.name]
    with LoadingLine(entry.name, enabled=not verbose):
        return await pool.get(name)


def speed_line(generation: Generation, model: LoadedModel) -> str:
    """Token counts and speeds of a finished generation, for ``-v``."""
    tokens = generation.completion_tokens
    parts = [f"{tokens} tokens", f"prompt {generation.prompt_tokens} tokens"]
    first, done = generation.first_piece_at, generation.finished_at
    if first is not None:
        parts.append(f"first token after {(first - generation.submitted_at) * 1000:.0f} ms")
        if done is not None and done > first and tokens > 1:
            parts.append(f"{(tokens - 1) / (done - first):.1f} tok/s")
    parts.append(f"model loaded in {model.load_seconds:.2f} s")
    return "; ".join(parts)


def _hint(exc: ApiError, name: str, report: DiscoveryReport) -> str | None:
    if exc.code == "model_not_found":
        return unknown_model_hint(report)
    if exc.status >= 500:
        default = report.default
        return load_failure_hint(default.name if name == "default" and default else name,
                                 why=exc.details)
    if "context" in exc.details:
        return ("Lower --max-tokens, or raise --ctx up to the model's trained context "
                "('shimmy list' shows it).")
    return "Check the option named above; 'shimmy generate --help' lists the ranges."
