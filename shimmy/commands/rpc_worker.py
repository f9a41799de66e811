"""``shimmy rpc-worker``: serve this machine's CPU to shimmy (or llama.cpp) elsewhere, which
then puts some of a model's layers here (docs/RPC.md)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from types import ModuleType

from shimmy.config import Config, ConfigError, parse_bind
from shimmy.engine import library

DEFAULT_WORKER_BIND = "127.0.0.1:50052"  # llama.cpp's rpc-server's default
WARNING = ("rpc-worker: WARNING: llama.cpp's RPC protocol has no authentication and no "
           "encryption. Anyone who can connect to {endpoint} can make this machine compute "
           "for them and send it data to hold. Serve it on a private network only, never "
           "where the internet reaches it.")


def rpc_worker(config: Config, args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM (exit status 0); 1 if it cannot serve at all."""
    host, port = parse_bind(args.bind or DEFAULT_WORKER_BIND, "--bind", DEFAULT_WORKER_BIND)
    endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    engine = library.load()
    if not engine.rpc_available():
        print("rpc-worker: llama.cpp's RPC backend (libggml-rpc.so) is not installed: "
              "scripts/setup.sh builds it (scripts/llama_wheel.py)", file=sys.stderr)
        return 1
    try:
        cache = _cache_dir(args.cache)
    except ConfigError as exc:
        print(f"rpc-worker: {exc}", file=sys.stderr)
        return 2
    print(WARNING.format(endpoint=endpoint), file=sys.stderr)
    print(f"rpc-worker: serving this machine's CPU ({engine.cpu_variant() or 'built in'}, "
          f"{config.n_threads} threads) at {endpoint}"
          f"{f', tensor cache in {cache}' if cache else ''}; Ctrl-C stops it",
          file=sys.stderr, flush=True)
    return _serve_until_signal(engine, endpoint, config.n_threads, cache)


def _cache_dir(text: str | None) -> str | None:
    """--cache DIR: where the worker keeps tensors it was sent, by hash, so that a client
    that loads the same model again sends only the hashes of big tensors."""
    if not text:
        return None
    path = Path(text).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--cache '{text}': {exc.strerror or exc}") from None
    return str(path)


def _serve_until_signal(engine: ModuleType, endpoint: str, threads: int,
                        cache: str | None) -> int:
    # ggml's server blocks in accept() for good: it runs in a thread, and the main thread
    # waits for a signal, then ends the process (the thread cannot be stopped otherwise)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server = threading.Thread(target=engine.rpc_serve, args=(endpoint, threads, cache),
                              name="rpc-worker", daemon=True)
    server.start()
    while server.is_alive() and not stop.wait(0.2):
        pass
    code = 0
    if not server.is_alive():  # ggml returns only when it cannot listen
        print(f"rpc-worker: cannot serve at {endpoint} (see above; is the port taken?)",
              file=sys.stderr)
        code = 1
    else:
        print("rpc-worker: stopped", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
