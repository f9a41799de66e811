"""``shimmy serve``: wire discovery, the model pool and the API into one server."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from shimmy.api.routes import build_ollama_router, build_router
from shimmy.api.state import AppState
from shimmy.commands.advice import serve_screen
from shimmy.commands.term import error
from shimmy.config import API_KEY_ENV, Config
from shimmy.engine.pool import ModelPool
from shimmy.http.router import Router
from shimmy.http.server import Server
from shimmy.metrics import METRICS
from shimmy.models.registry import ModelRegistry
from shimmy.security import ADMISSION, SecurityPolicy, is_loopback
from shimmy.web import ASSETS as WEB_ASSETS

log = logging.getLogger("shimmy")


def build_state(config: Config) -> AppState:
    registry = ModelRegistry(config.discover(), config.model_aliases)
    pool = ModelPool(registry, config.engine_settings(), config.pool_limits())
    return AppState(registry=registry, pool=pool)


async def serve(config: Config) -> int:
    start_workers(asyncio.get_running_loop())
    state = build_state(config)
    if screen := await asyncio.to_thread(serve_screen, config.model_path,
                                         state.registry.report):
        error(*screen)
        return 1
    server = build_server(config, state)
    try:
        await server.start()
    except OSError as exc:
        print(f"error: cannot listen on {config.host}:{config.port}: {_why(exc, config.port)}",
              file=sys.stderr)
        return 1
    # handle signals before the banner: whoever waits for it may signal at once
    stop = _stop_on_signals()
    default = state.registry.default()
    print(f"shimmy listening on http://{config.host}:{server.port} "
          f"({len(state.registry.entries())} models; default: "
          f"{default.name if default else 'none'})", flush=True)
    ollama = await start_ollama_listener(config, state)
    if warning := exposure_warning(config):
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    serving = asyncio.create_task(server.serve_forever())
    await stop.wait()
    log.info("shutting down: finishing requests for up to %.0f s", config.shutdown_grace)
    if ollama is not None:
        await asyncio.gather(server.shutdown(config.shutdown_grace),
                             ollama.shutdown(config.shutdown_grace))
    else:
        await server.shutdown(config.shutdown_grace)
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serving
    await state.pool.aclose()
    return 0


def start_workers(loop: asyncio.AbstractEventLoop) -> ThreadPoolExecutor:
    """Give the loop a worker pool for blocking work (template rendering, tokenizing,
    loading, hashing) with all its threads started now: a pool that grows under load
    looks like a thread leak to anyone watching the process, and never shrinks anyway."""
    size = min(32, (os.cpu_count() or 1) + 4)  # the size asyncio picks by default
    workers = ThreadPoolExecutor(max_workers=size, thread_name_prefix="shimmy-worker")
    everyone_started = threading.Barrier(size)
    # each task blocks until all have a thread, so the pool must start every thread
    for _ in range(size):
        workers.submit(everyone_started.wait, 30)
    loop.set_default_executor(workers)
    return workers


def build_server(config: Config, state: AppState) -> Server:
    ADMISSION.max_queue = config.max_queue
    public = ("/api/health", *WEB_ASSETS)  # the chat page's files hold no data
    return _server(config, build_router(state), config.host, config.port, public)


def build_ollama_server(config: Config, state: AppState) -> Server | None:
    """The second listener, with Ollama's API and the same access rules and limits."""
    if config.ollama_bind is None:
        return None
    host, port = config.ollama_bind
    # "/" only says "Ollama is running", which clients probe before they send a key
    return _server(config, build_ollama_router(state), host, port, ("/",))


def _server(config: Config, router: Router, host: str, port: int,
            public: tuple[str, ...]) -> Server:
    policy = SecurityPolicy.build(host, api_key=config.api_key,
                                  extra_hosts=tuple(config.allowed_hosts),
                                  cors_origins=tuple(config.cors_origins), public_paths=public)
    return Server(router, host, port,
                  keepalive_timeout=config.idle_timeout, header_timeout=config.header_timeout,
                  max_connections=config.max_connections, policy=policy, observer=METRICS)


async def start_ollama_listener(config: Config, state: AppState) -> Server | None:
    """Start the Ollama listener; if its address is taken (a real Ollama may run there)
    or unusable, say so in one line and serve without it."""
    server = build_ollama_server(config, state)
    if server is None:
        return None
    try:
        await server.start()
    except OSError as exc:
        port = server.port
        why = "the address is in use (is Ollama running?)" if exc.errno == errno.EADDRINUSE \
            else _why(exc, port)
        print(f"shimmy: no Ollama API on {server.host}:{port}: {why}; --ollama-bind "
              "HOST:PORT moves it", file=sys.stderr, flush=True)
        return None
    print(f"shimmy: Ollama API on http://{server.host}:{server.port}", flush=True)
    return server


def exposure_warning(config: Config) -> str | None:
    """What to tell someone who makes the server reachable without a key."""
    if is_loopback(config.host) or config.api_key:
        return None
    return (f"listening on {config.host} without an API key: anyone who can reach this "
            f"machine can use the models; set --api-key or {API_KEY_ENV}")


def _stop_on_signals() -> asyncio.Event:
    """SIGINT/SIGTERM set the returned event (a graceful stop); a second one exits now."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            print("shimmy: second signal, exiting now", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, on_signal, signum)
    return stop


def _why(exc: OSError, port: int) -> str:
    if exc.errno == errno.EADDRINUSE:
        from shimmy.commands.ports import busy_port_advice  # reads /proc only on this path

        return busy_port_advice(port)
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "that address does not belong to this machine"
    if isinstance(exc, socket.gaierror):
        return "that host name does not resolve to an address"
    return exc.strerror or str(exc)
