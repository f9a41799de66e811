"""``shimmy bench [MODEL]``: prompt and generation speed and time to first token.

Each run sends a prompt of exactly ``--prompt-tokens`` tokens, read whole (no cached
prefix is reused), and generates ``--gen-tokens`` tokens with end-of-text ignored,
greedily. One request at a time: this measures a single stream, not the server's
throughput under load.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from dataclasses import asdict, dataclass
from typing import Any

from shimmy.commands.advice import load_failure_hint, unknown_model_hint
from shimmy.commands.term import LoadingLine, error, paint, print_json
from shimmy.config import Config
from shimmy.engine.loaded import LoadedModel
from shimmy.engine.scheduler import GenerationError, Sampling
from shimmy.errors import ApiError
from shimmy.models.registry import ModelRegistry

FILLER = ("The quick brown fox jumps over the lazy dog while the river runs past old mills, "
          "green fields and quiet villages where people talk about the weather. ")
METRICS = ("ttft_ms", "prompt_tps", "gen_tps")


@dataclass(frozen=True, slots=True)
class RunResult:
    prompt_tokens: int
    gen_tokens: int
    cached_tokens: int
    ttft_ms: float  # submit to first generated token: the prompt's processing plus one step
    prompt_tps: float
    gen_tps: float  # tokens after the first, over the time after the first


def settle_engine_defaults(config: Config, args: argparse.Namespace) -> None:
    """One slot and a context just big enough, unless the command line says otherwise."""
    if args.parallel is None:
        config.parallel = 1
    if args.ctx is None:
        config.ctx = max(256, args.prompt_tokens + args.gen_tokens + 16)


def bench(config: Config, args: argparse.Namespace) -> int:
    if problem := _argument_problem(args):
        error(problem, "See 'shimmy bench --help'.")
        return 2
    settle_engine_defaults(config, args)
    report = config.discover()
    try:
        entry = ModelRegistry(report).resolve(args.model)
    except ApiError as exc:
        error(exc.details, unknown_model_hint(report))
        return 1
    try:
        with LoadingLine(entry.name, enabled=not config.verbose):
            model = LoadedModel(entry.name, entry.path, config.engine_settings(),
                                list(entry.loras), entry.info)
    except Exception as exc:
        error(f"model '{entry.name}' does not load: {exc}",
              load_failure_hint(entry.name, why=str(exc)))
        return 1
    try:
        results = asyncio.run(_measure(model, args, show_progress=_progress_wanted(args)))
        summary = _summary(entry.name, str(entry.path), model, config, results)
    except (ApiError, GenerationError) as exc:
        detail = exc.details if isinstance(exc, ApiError) else str(exc)
        error(f"the benchmark failed: {detail}", "Try a smaller --prompt-tokens or "
              "--gen-tokens, or a larger --ctx.")
        return 1
    finally:
        model.close()
    if args.json:
        print_json(summary)
    else:
        _print_table(summary)
    return 0


def _progress_wanted(args: argparse.Namespace) -> bool:
    return not args.json and not args.verbose and sys.stderr.isatty()


def _argument_problem(args: argparse.Namespace) -> str | None:
    for option, value in (("--runs", args.runs), ("--prompt-tokens", args.prompt_tokens),
                          ("--gen-tokens", args.gen_tokens)):
        if value < 1:
            return f"{option} {value}: must be 1 or more"
    return None


async def _measure(model: LoadedModel, args: argparse.Namespace,
                   show_progress: bool) -> list[RunResult]:
    results = []
    for run in range(1, args.runs + 1):
        if show_progress:
            print(f"run {run}/{args.runs}...", end="\r", file=sys.stderr, flush=True)
        results.append(await _one_run(model, _prompt(model, run, args.prompt_tokens),
                                      args.gen_tokens))
    if show_progress:
        print(" " * 20, end="\r", file=sys.stderr, flush=True)
    return results


def _prompt(model: LoadedModel, run: int, length: int) -> list[int]:
    text = f"Run {run}: "
    tokens = model.tokenize(text)
    while len(tokens) < length:  # repeat the filler until there are enough tokens
        text += FILLER * 8
        tokens = model.tokenize(text)
    return tokens[:length]


async def _one_run(model: LoadedModel, prompt: list[int], gen_tokens: int) -> RunResult:
    generation = model.generate(prompt, gen_tokens, Sampling(temperature=0.0, seed=1),
                                ignore_eos=True, reuse_cache=False)
    await generation.text()
    first, done = generation.first_piece_at, generation.finished_at
    assert first is not None and done is not None, "a finished generation has timestamps"
    ttft = first - generation.submitted_at
    produced = generation.completion_tokens
    after_first = done - first
    return RunResult(
        prompt_tokens=generation.prompt_tokens,
        gen_tokens=produced,
        cached_tokens=generation.cached_tokens,
        ttft_ms=ttft * 1000,
        prompt_tps=generation.prompt_tokens / ttft if ttft > 0 else 0.0,
        gen_tps=(produced - 1) / after_first if produced > 1 and after_first > 0 else 0.0,
    )


def _summary(name: str, path: str, model: LoadedModel, config: Config,
             results: list[RunResult]) -> dict[str, Any]:
    return {
        "model": name,
        "path": path,
        "settings": {"ctx": model.n_ctx, "slots": config.parallel, "threads": config.n_threads,
                     "gpu_layers": config.gpu_layers},
        "load_ms": model.load_seconds * 1000,
        "runs": [asdict(result) for result in results],
        "median": {metric: statistics.median(getattr(r, metric) for r in results)
                   for metric in METRICS},
    }


def _print_table(summary: dict[str, Any]) -> None:
    settings = summary["settings"]
    print(f"model:    {summary['model']} ({summary['path']})")
    print(f"settings: context {settings['ctx']}, {settings['slots']} slot(s), "
          f"{settings['threads']} threads; loaded in {summary['load_ms']:.0f} ms")
    header = f"{'run':<7}{'prompt':>8}{'prompt tok/s':>14}{'gen':>6}{'gen tok/s':>11}" \
             f"{'TTFT ms':>10}"
    print(paint(header, "bold"))
    for index, run in enumerate(summary["runs"], 1):
        print(f"{index:<7}{run['prompt_tokens']:>8}{run['prompt_tps']:>14.1f}"
              f"{run['gen_tokens']:>6}{run['gen_tps']:>11.1f}{run['ttft_ms']:>10.1f}")
    median = summary["median"]
    print(paint(f"{'median':<7}{'':>8}{median['prompt_tps']:>14.1f}{'':>6}"
                f"{median['gen_tps']:>11.1f}{median['ttft_ms']:>10.1f}", "bold"))
