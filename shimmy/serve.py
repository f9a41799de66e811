"""``shimmy serve``: wire discovery, the model pool and the API into one server."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import sys

from shimmy.api.routes import build_router
from shimmy.api.state import AppState
from shimmy.config import Config
from shimmy.engine.pool import ModelPool
from shimmy.http.server import Server
from shimmy.models.registry import ModelRegistry

log = logging.getLogger("shimmy")


def build_state(config: Config) -> AppState:
    registry = ModelRegistry(config.discover())
    return AppState(registry=registry, pool=ModelPool(registry, config.engine_settings()))


async def serve(config: Config) -> int:
    state = build_state(config)
    if problem := explicit_model_problem(config, state.registry):
        print(f"error: {problem}", file=sys.stderr)
        return 1
    server = Server(build_router(state), config.host, config.port)
    try:
        await server.start()
    except OSError as exc:
        print(f"error: cannot listen on {config.host}:{config.port}: {_why(exc)}",
              file=sys.stderr)
        return 1
    # handle signals before the banner: whoever waits for it may signal at once
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    default = state.registry.default()
    print(f"shimmy listening on http://{config.host}:{server.port} "
          f"({len(state.registry.entries())} models; default: "
          f"{default.name if default else 'none'})", flush=True)
    serving = asyncio.create_task(server.serve_forever())
    await stop.wait()
    log.info("shutting down")
    await server.shutdown()
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serving
    await asyncio.to_thread(state.pool.close)
    return 0


def explicit_model_problem(config: Config, registry: ModelRegistry) -> str | None:
    """Why the file given with --model-path cannot be served, if it cannot."""
    if config.model_path is None:
        return None
    wanted = config.model_path.resolve()
    if any(entry.path.resolve() == wanted for entry in registry.entries()):
        return None
    reasons = [skip.reason for skip in registry.report.skipped
               if skip.path.resolve() == wanted]
    return f"--model-path {config.model_path}: {reasons[0] if reasons else 'not usable'}"


def _why(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "the port is already in use (is another shimmy running? try --port)"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "that address does not belong to this machine"
    if isinstance(exc, socket.gaierror):
        return "that host name does not resolve to an address"
    return exc.strerror or str(exc)
