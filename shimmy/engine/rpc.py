"""One model over several machines: llama.cpp's RPC workers (docs/RPC.md).

ggml's RPC client aborts the whole process when a worker it connects to does not answer,
so every worker is checked here first, by TCP and the RPC protocol's hello, and a load
that cannot reach one fails with an error naming it. A worker serves one client
connection at a time, and this process keeps one connection per worker for every model
that uses it, so loads that use workers run one at a time, and a worker already held by a
loaded model is not checked again.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterator

from shimmy.engine import library

# ggml/src/ggml-rpc/ggml-rpc.cpp of llama-cpp-python 0.3.36: a command is one byte, then
# the request's size (8 bytes, little-endian) and the request; a reply is its size, then
# itself. HELLO must be the first command; its request and reply carry 24 bytes of
# transport capabilities (zeros: plain TCP), the reply's first three bytes the version.
RPC_CMD_HELLO = 14
RPC_CONN_CAPS_SIZE = 24
RPC_PROTO_MAJOR = 7
RPC_PROTO_MINOR = 0
CHECK_TIMEOUT = 5.0  # seconds for a worker to accept and answer the hello
_ENDPOINT = re.compile(r"(\[[0-9a-fA-F:.]+\]|[^\s:,\[\]]+):(\d{1,5})")

_lock = threading.Lock()
_holders: Counter[str] = Counter()  # endpoint -> loaded models of this process using it


class RpcError(RuntimeError):
    """An RPC worker that cannot be used; the message names it and says why."""


def parse_endpoints(text: str, source: str = "--rpc") -> tuple[str, ...]:
    """``HOST:PORT[,HOST:PORT...]`` as llama-server's ``--rpc`` takes it."""
    endpoints = tuple(part.strip() for part in text.split(",") if part.strip())
    if not endpoints:
        raise ValueError(f"{source} '{text}': expected HOST:PORT[,HOST:PORT...]")
    for endpoint in endpoints:
        match = _ENDPOINT.fullmatch(endpoint)
        if match is None or not 0 < int(match[2]) <= 65535:
            raise ValueError(f"{source} '{endpoint}': expected HOST:PORT, e.g. "
                             "192.168.1.20:50052")
    if len(set(endpoints)) != len(endpoints):
        raise ValueError(f"{source} '{text}' names a worker twice")
    return endpoints


def check_worker(endpoint: str, timeout: float = CHECK_TIMEOUT) -> tuple[int, int, int]:
    """Connect and say hello as ggml's client does; returns the worker's protocol version.

    Raises ``RpcError`` naming the worker when it is unreachable, silent (busy with
    another client: a worker serves one at a time) or not a compatible RPC worker.
    """
    host, _, port = endpoint.rpartition(":")
    try:
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout)
    except OSError as exc:
        raise RpcError(f"RPC worker {endpoint} is unreachable: "
                       f"{exc.strerror or exc}") from None
    with sock:
        major, minor, patch = _hello(sock, endpoint, timeout)
    if major != RPC_PROTO_MAJOR or minor > RPC_PROTO_MINOR:
        raise RpcError(f"RPC worker {endpoint} speaks RPC protocol {major}.{minor}.{patch}; "
                       f"this shimmy speaks {RPC_PROTO_MAJOR}.{RPC_PROTO_MINOR}: run the same "
                       "shimmy (or a llama.cpp of the same version) on every machine")
    return major, minor, patch


def _hello(sock: socket.socket, endpoint: str, timeout: float) -> bytes:
    try:
        sock.settimeout(timeout)
        request = struct.pack("<BQ", RPC_CMD_HELLO, RPC_CONN_CAPS_SIZE)
        sock.sendall(request + bytes(RPC_CONN_CAPS_SIZE))
        size = struct.unpack("<Q", _read(sock, 8))[0]
        if size != 4 + RPC_CONN_CAPS_SIZE:
            raise RpcError(f"RPC worker {endpoint} answered the hello with {size} bytes, "
                           "not llama.cpp's 28: is it an RPC worker of another version?")
        return _read(sock, size)[:3]
    except TimeoutError:
        raise RpcError(f"RPC worker {endpoint} did not answer within {timeout:g} s: a worker "
                       "serves one client at a time, so another shimmy or llama.cpp may be "
                       "using it, or a firewall drops the connection") from None
    except (OSError, EOFError) as exc:
        raise RpcError(f"RPC worker {endpoint} closed the connection during the hello "
                       f"({exc}): is it a llama.cpp RPC worker?") from None


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("end of stream")
        data += chunk
    return data


def _register(endpoints: tuple[str, ...]) -> list[int]:
    """Check the workers this process does not hold yet, then register all of them."""
    engine = library.load()
    if not engine.rpc_available():
        raise RpcError("llama.cpp's RPC backend (libggml-rpc.so) is not installed: "
                       "scripts/setup.sh builds it into the llama.cpp wheel "
                       f"(or set {library.RPC_BACKEND_ENV} to one)")
    for endpoint in endpoints:
        if not _holders[endpoint]:
            check_worker(endpoint)
    devices: list[int] = []
    for endpoint in endpoints:
        devices.extend(engine.rpc_add_server(endpoint))
    return devices


@contextlib.contextmanager
def loading(endpoints: tuple[str, ...]) -> Iterator[list[int]]:
    """Around a model's load: yields the workers' devices (none without workers), and
    counts the model as holding them if the load succeeds (``release`` at unload)."""
    if not endpoints:
        yield []
        return
    with _lock:
        yield _register(endpoints)
        _holders.update(endpoints)


def release(endpoints: tuple[str, ...]) -> None:
    """A model that used these workers has been freed."""
    with _lock:
        _holders.subtract(endpoints)


def device_facts(endpoints: tuple[str, ...]) -> list[dict[str, object]]:
    """Each worker's devices with their free and total memory, or the worker's error."""
    facts: list[dict[str, object]] = []
    for endpoint in endpoints:
        try:
            with _lock:
                _register((endpoint,))
                facts.extend(library.load().rpc_device_facts(endpoint))
        except (RpcError, RuntimeError) as exc:
            facts.append({"endpoint": endpoint, "error": str(exc)})
    return facts


_BUFFER_LINE = re.compile(r"(\S+)\s+(model|KV|compute|output) buffer size =\s*([\d.]+) MiB")
_OFFLOAD_LINE = re.compile(r"offloaded (\d+)/(\d+) layers")


def placement(log_text: str) -> dict[str, object]:
    """Where a load put things, from llama.cpp's log: MiB per buffer kind and device
    (``CPU_Mapped``, ``RPC0[host:port]``, ...) and the layers offloaded to devices."""
    buffers: dict[str, dict[str, float]] = {}
    for device, kind, mib in _BUFFER_LINE.findall(log_text):
        per_device = buffers.setdefault(device, {})
        per_device[kind] = round(per_device.get(kind, 0.0) + float(mib), 2)
    found = _OFFLOAD_LINE.findall(log_text)
    layers = {"offloaded": int(found[-1][0]), "of": int(found[-1][1])} if found else None
    return {"buffers_mib": buffers, "layers": layers}
