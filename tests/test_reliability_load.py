"""Load: 300 slowloris sockets, and a 16-client soak on the real model.

Both run against the session's Gemma server; a second, tiny-model server with a short
header timeout shows the slow sockets being dropped. Process figures (RSS, threads, file
descriptors) come from /proc/<pid> of the server process. Loopback only.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from clients import WsClient, connect
from conftest import ShimmyProcess, isolated_env, wait_until
from test_metrics import metric, scrape
from tiny_model import write_spelling_model
from wsproto.events import TextMessage

MODEL = "gemma-3-270m-q4_k_m"
SLOW_SOCKETS = 300
HEALTH_SECONDS = 1.0
SOAK_CLIENTS = 16
SOAK_SECONDS = 6.0
WARM_UP_SECONDS = 1.0
RSS_GROWTH = 0.10


def open_slowloris(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that each start a request head and never finish it."""
    sockets = []
    for index in range(count):
        sock = connect(port, timeout=5)
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\nX-Slow-%d: " % index)
        sockets.append(sock)
    return sockets


def drip(sockets: list[socket.socket]) -> int:
    """One more header byte on every socket still open; how many were still open."""
    open_count = 0
    for sock in sockets:
        try:
            sock.sendall(b"z")
            open_count += 1
        except OSError:
            pass
    return open_count


def timed_health(port: int) -> float:
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/api/health")
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["status"] == "healthy"
    finally:
        conn.close()
    return time.monotonic() - started


def test_health_answers_while_300_slowloris_sockets_are_held(port: int) -> None:
    baseline = metric(port, "shimmy_connections_open")  # the scrape's own, and leftovers
    sockets = open_slowloris(port, SLOW_SOCKETS)
    try:
        assert wait_until(lambda: metric(port, "shimmy_connections_open") >= SLOW_SOCKETS)
        for _ in range(6):
            assert drip(sockets) == SLOW_SOCKETS  # held: 30 s of header timeout left
            assert timed_health(port) < HEALTH_SECONDS
            time.sleep(0.3)
    finally:
        for sock in sockets:
            sock.close()
    assert wait_until(lambda: metric(port, "shimmy_connections_open") <= baseline, timeout=10)


def test_slowloris_sockets_are_dropped_at_the_header_timeout(tmp_path: Path) -> None:
    write_spelling_model(tmp_path / "models" / "speller.gguf", "hi")
    server = ShimmyProcess(["--model-dirs", str(tmp_path / "models"), "--threads", "1",
                            "--header-timeout", "1"], isolated_env(tmp_path), tmp_path)
    try:
        sockets = open_slowloris(server.port, SLOW_SOCKETS)
        started = time.monotonic()
        assert timed_health(server.port) < HEALTH_SECONDS
        for sock in sockets:
            sock.settimeout(4)
            assert sock.recv(1) == b""  # closed by the server, without an answer
        assert time.monotonic() - started < 4
        assert timed_health(server.port) < HEALTH_SECONDS
        for sock in sockets:
            sock.close()
    finally:
        server.stop()


# --- soak ---


def process_figures(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"rss": int(fields["VmRSS"].split()[0]) * 1024,
            "threads": int(fields["Threads"]),
            "fds": len(list(Path(f"/proc/{pid}/fd").iterdir()))}


def post(port: int, path: str, body: dict) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, json.dumps(body).encode(),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        assert response.status == 200, (path, response.status, data[:300])
        return data
    finally:
        conn.close()


def get(port: int, path: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200, (path, response.status)
        response.read()
    finally:
        conn.close()


def hang_up_mid_stream(port: int) -> None:
    body = json.dumps({"prompt": "Count slowly:", "max_tokens": 200, "stream": True,
                       "ignore_eos": True}).encode()
    sock = connect(port, timeout=60)
    try:
        sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n"
                     b"Content-Type: application/json\r\n\r\n%s" % (len(body), body))
        received = b""
        while received.count(b"data: ") < 2:
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
    finally:
        sock.close()


def websocket_generate(port: int) -> None:
    client = WsClient(port, "/ws/generate")
    try:
        client.sock.settimeout(60)
        client.send(TextMessage(data=json.dumps({"prompt": "Hello", "max_tokens": 6})))
        while "done" not in (frame := json.loads(client.receive_text())):
            assert "token" in frame, frame
    finally:
        client.close()


MESSAGES = [{"role": "user", "content": "Name a colour."}]
ACTIONS: list[tuple[str, Callable[[int], object]]] = [
    ("native", lambda p: post(p, "/api/generate", {"prompt": "The sea is", "max_tokens": 6})),
    ("native stream", lambda p: post(p, "/api/generate",
                                     {"prompt": "Once", "max_tokens": 6, "stream": True})),
    ("chat", lambda p: post(p, "/v1/chat/completions",
                            {"model": MODEL, "messages": MESSAGES, "max_tokens": 6})),
    ("completions stream", lambda p: post(p, "/v1/completions", {
        "model": MODEL, "prompt": "Two plus two", "max_tokens": 6, "stream": True})),
    ("messages", lambda p: post(p, "/v1/messages",
                                {"model": MODEL, "messages": MESSAGES, "max_tokens": 6})),
    ("websocket", websocket_generate),
    ("hang up", hang_up_mid_stream),
    ("health", lambda p: get(p, "/api/health")),
    ("metrics", lambda p: get(p, "/metrics")),
]


def run_clients(port: int, seconds: float) -> tuple[Counter[str], list[str]]:
    done: Counter[str] = Counter()
    errors: list[str] = []
    deadline = time.monotonic() + seconds
    lock = threading.Lock()

    def client(index: int) -> None:
        step = index
        while time.monotonic() < deadline:
            name, action = ACTIONS[step % len(ACTIONS)]
            step += 1
            try:
                action(port)
            except Exception as exc:  # every failure is counted, none may happen
                with lock:
                    errors.append(f"{name}: {type(exc).__name__}: {exc}")
            else:
                with lock:
                    done[name] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(SOAK_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 120)
    return done, errors


def idle(port: int) -> bool:
    samples = scrape(port)
    slots = samples[("shimmy_slots_active", frozenset({("model", MODEL)}))]
    queue = samples[("shimmy_queue_depth", frozenset({("model", MODEL)}))]
    return slots == 0 and queue == 0


def server_errors(port: int) -> float:
    return sum(count for (name, labels), count in scrape(port).items()
               if name == "shimmy_requests_total" and dict(labels)["status"].startswith("5"))


@pytest.fixture
def soak_pid(server: ShimmyProcess) -> Iterator[int]:
    yield server.proc.pid


def test_soak_16_clients_no_errors_no_leaks(port: int, soak_pid: int) -> None:
    _, errors = run_clients(port, WARM_UP_SECONDS)  # pools and caches reach their size
    assert errors == []
    assert wait_until(lambda: idle(port), timeout=30)
    time.sleep(0.5)
    before = process_figures(soak_pid)
    errors_before = server_errors(port)
    connections_before = metric(port, "shimmy_connections_open")

    done, errors = run_clients(port, SOAK_SECONDS)

    assert errors == [], errors[:5]
    assert sum(done.values()) >= SOAK_CLIENTS * 2 and all(done[name] for name, _ in ACTIONS)
    assert server_errors(port) == errors_before
    assert wait_until(lambda: idle(port), timeout=30), "slots or queue still busy"
    settled = wait_until(lambda: process_figures(soak_pid)["fds"] <= before["fds"]
                         and process_figures(soak_pid)["threads"] <= before["threads"],
                         timeout=10, interval=0.2)
    after = process_figures(soak_pid)
    assert settled, (before, after)
    assert after["rss"] < before["rss"] * (1 + RSS_GROWTH), (before, after)
    assert wait_until(lambda: metric(port, "shimmy_connections_open") <= connections_before)
