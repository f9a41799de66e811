"""The ``shimmy`` command: serve, generate, list, discover, probe, diag."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from shimmy import __version__
from shimmy.config import DEFAULT_HOST, DEFAULT_PORT, Config, ConfigError


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from shimmy.engine import native

    native.set_verbose(args.verbose)
    try:
        config = Config.from_args(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return args.run(config, args)
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shimmy", description="A local LLM inference server for GGUF models.")
    parser.add_argument("-V", "--version", action="version", version=version_line())
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = _command(commands, "serve", "run the HTTP/WebSocket server", _run_serve)
    _address_options(serve)
    _engine_options(serve)

    generate = _command(commands, "generate", "generate text and stream it to stdout",
                        _run_generate)
    generate.add_argument("--prompt", required=True, help="the prompt text")
    generate.add_argument("--model", default="default", help="model name (default: default)")
    generate.add_argument("--max-tokens", type=int, default=100, metavar="N")
    generate.add_argument("--temperature", type=float, default=0.7, metavar="T")
    generate.add_argument("--seed", type=int, default=-1, metavar="N")
    _engine_options(generate)

    for name, help_text, run in (
        ("list", "list the models shimmy can serve", _run_list),
        ("discover", "show where models were looked for, found and skipped", _run_discover),
    ):
        _model_options(_command(commands, name, help_text, run))
    diag = _command(commands, "diag", "print diagnostics about this machine and shimmy",
                    _run_diag)
    _address_options(diag)  # diag reports whether the port serve would use is free
    _engine_options(diag)
    probe = _command(commands, "probe", "load a model, decode one token, report", _run_probe)
    probe.add_argument("model", nargs="?", default="default", help="model name")
    _engine_options(probe)
    return parser


def version_line() -> str:
    from importlib import metadata

    try:
        llama = metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        llama = "unknown"
    return f"shimmy {__version__} (llama.cpp from llama-cpp-python {llama})"


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


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", metavar="FILE", help="a GGUF file to serve")
    parser.add_argument("--model-dirs", action="append", metavar="DIRS",
                        help="';'-separated folders to search for GGUF files")


def _engine_options(parser: argparse.ArgumentParser) -> None:
    _model_options(parser)
    parser.add_argument("--parallel", type=int, metavar="N",
                        help="requests decoded together (default 4)")
    parser.add_argument("--ctx", type=int, metavar="N",
                        help="context tokens shared by the slots (default 8192, capped at the "
                             "model's trained context)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads (default: one per physical core)")
    parser.add_argument("--gpu-layers", type=int, metavar="N",
                        help="layers to offload to a GPU (default 0)")


def _run_serve(config: Config, args: argparse.Namespace) -> int:
    from shimmy.serve import serve

    return asyncio.run(serve(config))


def _run_generate(config: Config, args: argparse.Namespace) -> int:
    from shimmy.commands.generate import generate

    return asyncio.run(generate(config, args))


def _run_list(config: Config, args: argparse.Namespace) -> int:
    from shimmy.commands.listing import list_models

    return list_models(config)


def _run_discover(config: Config, args: argparse.Namespace) -> int:
    from shimmy.commands.listing import show_discovery

    return show_discovery(config)


def _run_probe(config: Config, args: argparse.Namespace) -> int:
    from shimmy.commands.probe import probe

    return probe(config, args.model)


def _run_diag(config: Config, args: argparse.Namespace) -> int:
    from shimmy.commands.diag import diag

    return diag(config)
