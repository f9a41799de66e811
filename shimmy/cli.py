"""The ``shimmy`` command: serve, generate, list, discover, probe, diag, bench, rpc-worker."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from shimmy import __version__
from shimmy.config import (
    API_KEY_ENV,
    DEFAULT_HOST,
    DEFAULT_OLLAMA_BIND,
    DEFAULT_PORT,
    Config,
    ConfigError,
)
from shimmy.logs import LOG_FORMATS, LOG_LEVELS, configure_logging


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    configure_logging("debug" if args.verbose else getattr(args, "log_level", "warning"),
                      getattr(args, "log_format", "text"))
    from shimmy.engine import library

    library.set_verbose(args.verbose)
    try:
        config = Config.from_args(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(f"  See 'shimmy {args.command} --help' for the options and their ranges.",
              file=sys.stderr)
        return 2
    library.set_deterministic(config.deterministic)
    try:
        code = args.run(config, args)
        sys.stdout.flush()  # so that a reader gone early is noticed here, not at exit
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `shimmy list --json | head`: the reader has had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shimmy", description="A local LLM inference server for GGUF models.")
    parser.add_argument("-V", "--version", action="version", version=version_line())
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = _command(commands, "serve", "run the HTTP/WebSocket server", _run_serve)
    _address_options(serve)
    _engine_options(serve)
    serve.add_argument("--n-predict", type=int, metavar="N", dest="max_tokens",
                       help="the most tokens one answer may generate, whatever a request "
                            "asks, as llama-server's --n-predict (default 0: what the "
                            "context leaves)")
    _serving_options(serve)

    generate = _command(commands, "generate", "generate text and stream it to stdout",
                        _run_generate)
    generate.add_argument("--prompt", required=True, help="the prompt text")
    generate.add_argument("--model", default="default", help="model name (default: default)")
    generate.add_argument("--max-tokens", type=int, default=100, metavar="N",
                          help="tokens to generate at most (default 100)")
    generate.add_argument("--temperature", type=float, default=0.7, metavar="T",
                          help="sampling temperature, 0 for greedy (default 0.7)")
    generate.add_argument("--seed", type=int, default=-1, metavar="N",
                          help="sampling seed; -1 for a random one (default)")
    _engine_options(generate)

    for name, help_text, run in (
        ("list", "list the models shimmy can serve", _run_list),
        ("discover", "show where models were looked for, found and skipped", _run_discover),
    ):
        listing = _command(commands, name, help_text, run)
        _model_options(listing)
        _json_option(listing)
    diag = _command(commands, "diag", "print diagnostics about this machine and shimmy",
                    _run_diag)
    _address_options(diag)  # diag reports whether the port serve would use is free
    _engine_options(diag)
    _json_option(diag)
    probe = _command(commands, "probe", "load a model, decode one token, report", _run_probe)
    probe.add_argument("model", nargs="?", default="default", help="model name")
    _engine_options(probe)
    _json_option(probe)
    _bench_options(_command(commands, "bench", "measure prompt and generation speed and time "
                            "to first token", _run_bench))
    _worker_options(_command(commands, "rpc-worker", "serve this machine's CPU to shimmy "
                             "elsewhere, for models split over machines (llama.cpp RPC; "
                             "private networks only)", _run_rpc_worker))
    return parser


def _worker_options(worker: argparse.ArgumentParser) -> None:
    worker.add_argument("--bind", metavar="HOST:PORT",
                        help="address to serve at (default 127.0.0.1:50052); the protocol "
                             "has no authentication: private networks only")
    worker.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads (default: one per physical core)")
    worker.add_argument("--cache", metavar="DIR",
                        help="keep tensors sent here in DIR, so that loading the same "
                             "model again sends less (default: none)")


def version_line() -> str:
    """shimmy's version and the llama.cpp build it carries (read from files, not imported)."""
    from shimmy.engine.library import llama_build

    build = llama_build()
    return (f"shimmy {__version__} (llama.cpp {build['commit']}, "
            f"from llama-cpp-python {build['package']})")


def _command(commands, name: str, help_text: str, run) -> argparse.ArgumentParser:
    sub = commands.add_parser(name, help=help_text, description=help_text)
    sub.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                     help="log debug detail")
    sub.set_defaults(run=run)
    return sub


def _address_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bind", metavar="HOST:PORT",
                        help=f"address to listen on (default {DEFAULT_HOST}:{DEFAULT_PORT})")
    parser.add_argument("--port", type=int, metavar="N", help="port, overriding --bind's")


def _serving_options(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--ollama-bind", metavar="HOST:PORT",
                       help=f"also serve Ollama's API here, for Ollama clients (default "
                            f"{DEFAULT_OLLAMA_BIND}, skipped if taken); 'off' turns it off")
    access = serve.add_argument_group("access (see docs/SECURITY.md)")
    access.add_argument("--api-key", metavar="KEY",
                        help=f"require this key ('Authorization: Bearer KEY' or 'x-api-key') "
                             f"on every route but /api/health; or set {API_KEY_ENV}")
    access.add_argument("--allowed-hosts", action="append", metavar="HOSTS",
                        help="','-separated Host names to accept besides localhost and "
                             "the bound address ('*': any); repeatable")
    access.add_argument("--cors-origin", action="append", metavar="ORIGIN",
                        help="let web pages from ORIGIN (e.g. http://localhost:3000, or '*') "
                             "call the API; repeatable")
    limits = serve.add_argument_group("limits")
    limits.add_argument("--max-queue", type=int, metavar="N",
                        help="requests that may wait while every slot is busy; beyond "
                             "that 503 with Retry-After (default 64)")
    limits.add_argument("--max-connections", type=int, metavar="N",
                        help="open connections at most (default 512)")
    limits.add_argument("--header-timeout", type=float, metavar="S",
                        help="seconds a request's head may take to arrive (default 30)")
    limits.add_argument("--idle-timeout", type=float, metavar="S",
                        help="seconds an idle keep-alive connection stays open (default 5)")
    limits.add_argument("--shutdown-grace", type=float, metavar="S",
                        help="on SIGTERM/SIGINT, seconds to let requests finish (default 10)")
    pool = serve.add_argument_group("models in memory")
    pool.add_argument("--keep-alive", metavar="DURATION",
                      help="how long a model stays loaded after its last request: 30s, 5m, "
                           "1h or seconds; negative: forever; 0: unload when idle (default "
                           "5m; or set SHIMMY_KEEP_ALIVE)")
    pool.add_argument("--max-models", type=int, metavar="N",
                      help="models loaded at once; the least recently used idle one makes "
                           "room (default 3, 0: no limit; or set SHIMMY_MAX_MODELS)")
    pool.add_argument("--memory-budget", metavar="SIZE",
                      help="memory for loaded models' weights and KV caches, e.g. 8GiB or "
                           "75%%; 0: no budget (default 80%% of physical memory; or set "
                           "SHIMMY_MEMORY_BUDGET)")
    pool.add_argument("--model-alias", action="append", metavar="PATTERN=MODEL",
                      help="serve requests for model names matching PATTERN ('*' globs, "
                           "e.g. 'claude-*=qwen3-coder') with MODEL; repeatable; names "
                           "starting 'claude-' that match none go to the default model "
                           "(or set SHIMMY_MODEL_ALIAS, ','-separated)")
    pool.add_argument("--prompt-cache", metavar="SIZE",
                      help="memory per model for the cached prompts of slots that moved on "
                           "to other requests, e.g. 1GiB; 0: none (default 256MiB)")
    logs = serve.add_argument_group("logging")
    logs.add_argument("--log-level", choices=LOG_LEVELS, default="warning",
                      help="'info' logs one line per request (default warning)")
    logs.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                      help="text, or one JSON object per line")


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _bench_options(bench: argparse.ArgumentParser) -> None:
    bench.add_argument("model", nargs="?", default="default", help="model name")
    bench.add_argument("--runs", type=int, default=3, metavar="N",
                       help="measured runs; medians are reported (default 3)")
    bench.add_argument("--prompt-tokens", type=int, default=256, metavar="N",
                       help="prompt length in tokens (default 256)")
    bench.add_argument("--gen-tokens", type=int, default=64, metavar="N",
                       help="tokens generated per run (default 64)")
    _engine_options(bench)  # without --parallel/--ctx: 1 slot, a context that fits a run
    _json_option(bench)


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", metavar="FILE", help="a GGUF file to serve")
    parser.add_argument("--model-dirs", action="append", metavar="DIRS",
                        help="';'-separated folders to search for GGUF files")


def _engine_options(parser: argparse.ArgumentParser) -> None:
    _model_options(parser)
    parser.add_argument("--parallel", type=int, metavar="N",
                        help="requests decoded together (default 4)")
    parser.add_argument("--ctx", type=int, metavar="N",
                        help="context tokens of each slot (default 8192, capped at the "
                             "model's trained context)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads (default: one per physical core)")
    parser.add_argument("--gpu-layers", type=int, metavar="N",
                        help="layers to offload to a GPU or, with --rpc, to the RPC "
                             "workers (default 0; with --rpc, all)")
    parser.add_argument("--rpc", metavar="HOST:PORT[,...]",
                        help="split each model's layers over these shimmy rpc-worker (or "
                             "llama.cpp rpc-server) processes; layers beyond --gpu-layers "
                             "stay on this CPU (or set SHIMMY_RPC)")
    parser.add_argument("--tensor-split", metavar="N0,N1,...",
                        help="shares of the offloaded layers per RPC device, in --rpc's "
                             "order, e.g. 3,1 (default: by the devices' free memory)")
    parser.add_argument("--deterministic", action="store_true",
                        help="the batch-invariant engine: a seed's text does not depend on "
                             "other requests (slower; also SHIMMY_DETERMINISTIC=1)")
    parser.add_argument("--kv-cache-type", metavar="TYPE",
                        help="KV cache element type: f16 (default; bf16 with "
                             "--deterministic), bf16 or q8_0 (half the memory)")
    parser.add_argument("--flash-attn", nargs="?", const="on", choices=("on", "off", "auto"),
                        metavar="MODE",
                        help="llama.cpp's flash attention over the f16 cache: on, off or "
                             "auto (default: on in the fast profile, as llama-server runs it; "
                             "off with --deterministic); off: plain attention")
    parser.add_argument("--batch-size", type=int, metavar="N",
                        help="prompt tokens per chunk, the unit of prefix reuse where "
                             "rows do not round alike (default 64); a pass reads up to "
                             "256 prompt tokens, or N if larger (64 with --deterministic)")
    parser.add_argument("--draft", type=int, metavar="N",
                        help="tokens a lone request guesses ahead from its own text and "
                             "checks in the same step (default 3, 0 turns it off; with "
                             "--deterministic, bf16 and q8_0 caches only)")


def _run_serve(config: Config, args: argparse.Namespace) -> int:
    from shimmy.serve import serve

    return asyncio.run(serve(config))


def _run_generate(config: Config, args: argparse.Namespace) -> int:
    from shimmy.commands.generate import generate

    return asyncio.run(generate(config, args))


def _run_list(config: Config, args: argparse.Namespace) -> int:
    from shimmy.commands.listing import list_models

    return list_models(config, args.json)


def _run_discover(config: Config, args: argparse.Namespace) -> int:
    from shimmy.commands.listing import show_discovery

    return show_discovery(config, args.json)


def _run_probe(config: Config, args: argparse.Namespace) -> int:
    from shimmy.commands.probe import probe

    return probe(config, args.model, args.json)


def _run_diag(config: Config, args: argparse.Namespace) -> int:
    from shimmy.commands.diag import diag

    return diag(config, args.json)


def _run_rpc_worker(config: Config, args: argparse.Namespace) -> int:
    from shimmy.commands.rpc_worker import rpc_worker

    return rpc_worker(config, args)


def _run_bench(config: Config, args: argparse.Namespace) -> int:
    from shimmy.commands.bench import bench

    return bench(config, args)
