"""Faults: bad model files, clients that vanish, signals, a scheduler that fails.

A tiny looping model with a 32k context stands in where work must last: its decode slows
as the context fills, so a 30,000-token request keeps its slot busy for well over a
minute and a 20,000-token prompt takes seconds to read. Everything is loopback.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clients import WsClient, connect, request, request_json
from conftest import isolated_env, wait_until
from test_metrics import metric
from tiny_model import write_spelling_model
from wsproto.events import TextMessage

from shimmy.api.native import NativeApi
from shimmy.api.state import AppState
from shimmy.engine import pool as pool_module
from shimmy.engine.loaded import EngineSettings
from shimmy.engine.pool import ModelPool
from shimmy.engine.scheduler import Generation, GenerationError, Sampling, Scheduler
from shimmy.http.types import Request
from shimmy.models.registry import ModelRegistry

LONG_CONTEXT = 32768
ENDLESS = {"prompt": "", "max_tokens": 30000, "ignore_eos": True, "temperature": 0}
LONG_PROMPT = {"prompt": "x" * 20000, "max_tokens": 4, "temperature": 0}
SLOT_FREED_SECONDS = 2.0  # generous: a step takes milliseconds, a prompt chunk ~0.2 s


class Shimmy:
    """``shimmy serve`` in a subprocess (optionally under a memory limit), port 0."""

    def __init__(self, args: list[str], home: Path, memory_limit: int | None = None) -> None:
        def limit_memory() -> None:
            if memory_limit is not None:
                resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shimmy", "serve", "--port", "0", "--threads", "1", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=isolated_env(home), cwd=home, preexec_fn=limit_memory)
        banner = self.proc.stdout.readline()
        match = re.search(r"http://[\w.]+:(\d+)", banner)
        assert match, f"no listening banner: {banner!r}"
        self.port = int(match.group(1))

    def wait(self, timeout: float) -> str:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
            raise AssertionError(f"shimmy did not exit within {timeout} s:\n{out}") from None
        return out

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.wait(20)


@pytest.fixture(scope="module")
def long_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("long")
    write_spelling_model(folder / "looper.gguf", "abcd", eos_after=False,
                         context_length=LONG_CONTEXT)
    return folder


@pytest.fixture(scope="module")
def busy(long_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """One slot, a queue of one: easy to fill."""
    server = Shimmy(["--model-dirs", str(long_model), "--ctx", str(LONG_CONTEXT),
                     "--parallel", "1", "--max-queue", "1"], tmp_path_factory.mktemp("home"))
    yield server.port
    server.stop()


def slots(port: int) -> float:
    return metric(port, "shimmy_slots_active", model="looper")


def queued(port: int) -> float:
    return metric(port, "shimmy_queue_depth", model="looper")


def cancelled(port: int) -> float:
    return metric(port, "shimmy_generations_total", model="looper", outcome="cancelled")


def send_raw_post(port: int, path: str, body: dict, **headers: str) -> socket.socket:
    data = json.dumps(body).encode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    sock = connect(port, timeout=30)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n{extra}\r\n".encode() + data)
    return sock


def read_until(sock: socket.socket, marker: bytes, count: int = 1) -> bytes:
    received = b""
    while received.count(marker) < count:
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    return received


def hang_up(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def freed_within(port: int, seconds: float) -> float:
    started = time.monotonic()
    assert wait_until(lambda: slots(port) == 0 and queued(port) == 0, timeout=seconds,
                      interval=0.02), f"slot still busy after {seconds} s"
    return time.monotonic() - started


# --- clients that go away ---


def test_http_disconnect_mid_stream_frees_the_slot(busy: int) -> None:
    assert wait_until(lambda: slots(busy) == 0)
    before = cancelled(busy)
    sock = send_raw_post(busy, "/api/generate", {**ENDLESS, "stream": True})
    read_until(sock, b"data: ", 3)
    assert slots(busy) == 1
    hang_up(sock)
    freed_within(busy, SLOT_FREED_SECONDS)
    assert wait_until(lambda: cancelled(busy) == before + 1)


def test_http_disconnect_mid_prefill_frees_the_slot(busy: int) -> None:
    assert wait_until(lambda: slots(busy) == 0)
    sock = send_raw_post(busy, "/api/generate", LONG_PROMPT)
    assert wait_until(lambda: slots(busy) == 1, timeout=5)
    time.sleep(0.3)  # a few prompt chunks in: the whole prompt takes seconds
    assert slots(busy) == 1
    hang_up(sock)
    freed_within(busy, SLOT_FREED_SECONDS)


def test_websocket_disconnect_mid_stream_frees_the_slot(busy: int) -> None:
    assert wait_until(lambda: slots(busy) == 0)
    before = cancelled(busy)
    client = WsClient(busy, "/ws/generate")
    client.send(TextMessage(data=json.dumps(ENDLESS)))
    for _ in range(3):
        assert "token" in json.loads(client.receive_text())
    assert slots(busy) == 1
    hang_up(client.sock)
    freed_within(busy, SLOT_FREED_SECONDS)
    assert wait_until(lambda: cancelled(busy) == before + 1)


def test_websocket_disconnect_mid_prefill_frees_the_slot(busy: int) -> None:
    assert wait_until(lambda: slots(busy) == 0)
    client = WsClient(busy, "/ws/generate")
    client.send(TextMessage(data=json.dumps(LONG_PROMPT)))
    assert wait_until(lambda: slots(busy) == 1, timeout=5)
    time.sleep(0.3)
    hang_up(client.sock)
    freed_within(busy, SLOT_FREED_SECONDS)


# --- a full queue ---


def test_full_slots_and_queue_answer_503_with_retry_after(busy: int) -> None:
    assert wait_until(lambda: slots(busy) == 0)
    running = send_raw_post(busy, "/api/generate", {**ENDLESS, "stream": True})
    read_until(running, b"data: ")
    waiting = send_raw_post(busy, "/api/generate", {**ENDLESS, "stream": True})
    try:
        assert wait_until(lambda: queued(busy) == 1)
        status, headers, body = request(busy, "POST", "/api/generate", {"prompt": "x"})
        assert status == 503 and int(headers["retry-after"]) >= 1
        assert json.loads(body)["error"]["code"] == "server_busy"
        messages = [{"role": "user", "content": "hi"}]
        status, headers, body = request(busy, "POST", "/v1/chat/completions",
                                        {"model": "looper", "messages": messages})
        assert status == 503 and "retry-after" in headers
        assert json.loads(body)["error"]["code"] == "server_busy"  # OpenAI's shape
        status, _, body = request(busy, "POST", "/v1/messages",
                                  {"model": "looper", "max_tokens": 5, "messages": messages})
        assert status == 503 and json.loads(body)["error"]["type"] == "overloaded_error"
        client = WsClient(busy, "/ws/generate")
        client.send(TextMessage(data=json.dumps({"prompt": "x"})))
        assert json.loads(client.receive_text())["error"]["code"] == "server_busy"
        client.close()
    finally:
        hang_up(waiting)
        hang_up(running)
    freed_within(busy, SLOT_FREED_SECONDS)
    status, body = request_json(busy, "POST", "/api/generate", {"prompt": "", "max_tokens": 4})
    assert status == 200 and body["choices"][0]["text"] == "abcd"


# --- model files that cannot be served ---


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A server whose model files go bad after discovery, one model too big for memory
    (its KV cache would take 40 GiB; the process may have 8), and one good model. No memory
    budget, so that llama.cpp itself meets the too-big model (tests/test_pool.py covers the
    budget)."""
    models = tmp_path_factory.mktemp("models")
    for name in ("good", "truncated", "deleted", "replaced", "corrupt"):
        write_spelling_model(models / f"{name}.gguf", "ok!")
    write_spelling_model(models / "too-big.gguf", "ok!", context_length=1 << 25)
    server = Shimmy(["--model-dirs", str(models), "--ctx", str(1 << 25), "--parallel", "1",
                     "--memory-budget", "0"], tmp_path_factory.mktemp("home"),
                    memory_limit=8 << 30)
    truncated = models / "truncated.gguf"
    with truncated.open("r+b") as file:
        file.truncate(truncated.stat().st_size // 2)
    (models / "deleted.gguf").unlink()
    (models / "replaced.gguf").unlink()
    (models / "replaced.gguf").mkdir()  # unreadable as a file, even for root
    with (models / "corrupt.gguf").open("r+b") as file:
        file.seek(4)
        file.write(b"\xff" * 64)
    yield server.port
    server.stop()


@pytest.mark.parametrize(("model", "words"), [
    ("truncated", "not within the file bounds"), ("deleted", "No such file"),
    ("replaced", "failed to read"), ("corrupt", "version"), ("too-big", "failed to allocate"),
])
def test_a_bad_model_file_is_a_clear_error_for_that_request(faulty: int, model: str,
                                                            words: str) -> None:
    paths = ["/api/generate"] + (["/v1/completions"] if model != "too-big" else [])  # slow
    for path in paths:
        body = {"model": model, "prompt": "x"}
        status, _, data = request(faulty, "POST", path, body)
        assert status == 500, data
        error = json.loads(data)["error"]
        message = error["message"] + " " + error.get("details", "")
        assert f"Model '{model}' could not be loaded" in message
        assert words in message
    status, body = request_json(faulty, "POST", "/api/generate",
                                {"model": "good", "prompt": "", "max_tokens": 10})
    assert status == 200 and body["choices"][0]["text"] == "ok!"
    status, health = request_json(faulty, "GET", "/api/health")
    assert status == 200 and health["status"] == "healthy"


# --- signals ---


def _stream_in_thread(port: int, body: dict) -> tuple[threading.Thread, dict[str, Any]]:
    """POST ``body`` from a thread; the result dict gets status, data or error."""
    result: dict[str, Any] = {}

    def run() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("POST", "/api/generate", body=json.dumps(body).encode(),
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            result["status"] = response.status
            result["data"] = response.read()
        except (OSError, http.client.HTTPException) as exc:
            result["error"] = exc
        finally:
            conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def _refused(port: int) -> bool:
    try:
        connect(port, timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_lets_in_flight_work_finish_then_exits_0(long_model: Path,
                                                         tmp_path: Path) -> None:
    server = Shimmy(["--model-dirs", str(long_model), "--ctx", str(LONG_CONTEXT),
                     "--shutdown-grace", "30"], tmp_path)
    status, _ = request_json(server.port, "POST", "/api/generate", {"prompt": "", "max_tokens": 1})
    assert status == 200  # loaded
    thread, result = _stream_in_thread(server.port, {**ENDLESS, "max_tokens": 3000})
    assert wait_until(lambda: slots(server.port) == 1, timeout=5)
    server.proc.send_signal(signal.SIGTERM)
    assert wait_until(lambda: _refused(server.port), timeout=2), "still accepting"
    thread.join(30)
    assert result.get("status") == 200, result
    assert json.loads(result["data"])["usage"]["completion_tokens"] == 3000
    out = server.wait(10)
    assert server.proc.returncode == 0, out
    assert "Traceback" not in out


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_work_past_the_grace_period_is_cancelled_then_exits_0(long_model: Path, tmp_path: Path,
                                                              signum: int) -> None:
    server = Shimmy(["--model-dirs", str(long_model), "--ctx", str(LONG_CONTEXT),
                     "--shutdown-grace", "1"], tmp_path)
    sock = send_raw_post(server.port, "/api/generate", {**ENDLESS, "stream": True})
    read_until(sock, b"data: ", 2)
    started = time.monotonic()
    server.proc.send_signal(signum)
    out = server.wait(15)
    assert server.proc.returncode == 0, out
    assert time.monotonic() - started < 8
    rest = b""
    sock.settimeout(5)
    while chunk := sock.recv(65536):
        rest += chunk
    sock.close()
    assert b"[DONE]" not in rest  # cut off, not finished
    assert "Traceback" not in out


def test_a_second_signal_exits_at_once(long_model: Path, tmp_path: Path) -> None:
    server = Shimmy(["--model-dirs", str(long_model), "--ctx", str(LONG_CONTEXT),
                     "--shutdown-grace", "60"], tmp_path)
    sock = send_raw_post(server.port, "/api/generate", {**ENDLESS, "stream": True})
    read_until(sock, b"data: ", 2)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert server.proc.poll() is None  # waiting for the request, as asked
    started = time.monotonic()
    server.proc.send_signal(signal.SIGINT)
    out = server.wait(5)
    assert time.monotonic() - started < 3
    assert server.proc.returncode == 128 + signal.SIGINT, out
    sock.close()


# --- a scheduler that fails ---


class FakeEngine:
    """A ``BatchEngine`` stand-in: each step yields one piece per slot until max_tokens.
    A prompt starting with POISON fails at start; ``fail_step`` fails the next step;
    ``bug`` makes slot choice raise, which the scheduler does not expect."""

    POISON = 666

    def __init__(self, n_slots: int = 2) -> None:
        self.n_slots = n_slots
        self.n_ctx = 1024
        self.copies_cells = False  # no cells to copy between slots
        self.active: dict[int, list[int]] = {}
        self.fail_step = False
        self.bug = False

    def choose_slot(self, prompt: list[int]) -> int:
        if self.bug:
            raise RuntimeError("bug in choose_slot")
        free = [i for i in range(self.n_slots) if i not in self.active]
        return free[0] if free else -1

    def start(self, slot: int, prompt: list[int], sampling: dict, stop: list[str],
              max_tokens: int, ignore_eos: bool, logprobs: int, reuse: bool,
              special: bool = False) -> int:
        if prompt[0] == self.POISON:
            raise ValueError("this request's grammar is refused")
        self.active[slot] = [max_tokens, 0]
        return 0

    def step(self) -> list[tuple]:
        time.sleep(0.001)
        if self.fail_step:
            self.fail_step = False
            raise RuntimeError("llama_decode failed")
        events = []
        for slot, state in list(self.active.items()):
            state[1] += 1
            finish = "length" if state[1] >= state[0] else None
            if finish:
                del self.active[slot]
            events.append((slot, "t", finish, state[1], None, None))
        return events

    def release(self, slot: int) -> None:
        self.active.pop(slot, None)

    def forget(self, slot: int) -> None:
        self.release(slot)


def generation(prompt: list[int], max_tokens: int = 5) -> Generation:
    return Generation(prompt, max_tokens, Sampling(), [])


async def _text(item: Generation, timeout: float = 5.0) -> str:
    return await asyncio.wait_for(item.text(), timeout)


def test_one_failing_request_does_not_stop_the_scheduler() -> None:
    async def scenario() -> None:
        engine = FakeEngine()
        scheduler = Scheduler(engine, "fake")
        try:
            poisoned, healthy = generation([FakeEngine.POISON]), generation([1])
            scheduler.submit(poisoned)
            scheduler.submit(healthy)
            with pytest.raises(GenerationError, match="refused"):
                await _text(poisoned)
            assert await _text(healthy) == "ttttt"
            engine.fail_step = True
            doomed = generation([1], max_tokens=50)
            scheduler.submit(doomed)
            with pytest.raises(GenerationError, match="llama_decode failed"):
                await _text(doomed)
            assert await _text(generation_submitted(scheduler, [2])) == "ttttt"
            assert scheduler.alive and scheduler.failed is None
        finally:
            scheduler.stop()

    asyncio.run(scenario())


def generation_submitted(scheduler: Scheduler, prompt: list[int]) -> Generation:
    item = generation(prompt)
    scheduler.submit(item)
    return item


class FakeLoaded:
    """What the pool loads, with a fake engine; ``made`` counts the loads."""

    made: list[FakeLoaded] = []

    def __init__(self, name: str, *args: Any) -> None:
        self.name = name
        self.engine = FakeEngine()
        self.engine.bug = not FakeLoaded.made  # the first one's scheduler will die
        self.scheduler = Scheduler(self.engine, name)
        self.load_seconds = 0.01
        FakeLoaded.made.append(self)

    def close(self) -> None:
        self.scheduler.stop()


def test_a_dead_scheduler_turns_health_503_and_the_model_reloads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_spelling_model(tmp_path / "speller.gguf", "hi")
    registry = ModelRegistry.from_config(model_dirs=[tmp_path], env={})
    state = AppState(registry=registry, pool=ModelPool(registry, EngineSettings()))
    monkeypatch.setattr(pool_module, "LoadedModel", FakeLoaded)
    monkeypatch.setattr(FakeLoaded, "made", [])
    health = NativeApi(state).health
    ask = Request("GET", "/api/health", "", {}, b"")

    async def scenario() -> None:
        first = await state.pool.get("speller")
        assert (await health(ask)).status == 200
        waiting = generation([1])
        first.scheduler.submit(waiting)  # slot choice raises: the thread dies
        with pytest.raises(GenerationError, match="scheduler failed"):
            await _text(waiting)  # failed, not left hanging
        assert wait_until(lambda: not first.scheduler.alive)
        assert "bug in choose_slot" in (first.scheduler.failed or "")
        answer = await health(ask)
        assert answer.status == 503
        body = json.loads(answer.body)
        assert body["status"] == "unhealthy" and body["failed_models"] == ["speller"]
        second = await state.pool.get("speller")
        assert second is not first and len(FakeLoaded.made) == 2
        assert await _text(generation_submitted(second.scheduler, [1])) == "ttttt"
        assert (await health(ask)).status == 200
        state.pool.close()

    asyncio.run(scenario())
