"""The model pool, end to end: several models, loaded on first use, kept for their
keep-alive time, the least recently used unloaded to stay within --max-models and the
memory budget, and what /api/models, /api/ps and /api/health say about them.

Each server gets tiny spelling models that load in milliseconds: "one", "two" and "six"
(greedy output: their own name), a looper whose 30,000-token answer keeps its slot busy
for minutes, and a model whose 1M-token KV cache takes about a second to allocate, so that
a load lasts long enough to be seen from outside.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from clients import WsClient, connect, request, request_json
from conftest import ShimmyProcess, isolated_env, wait_until
from tiny_model import write_spelling_model
from wsproto.events import TextMessage

from shimmy.cli import main
from shimmy.config import parse_size
from shimmy.engine.loaded import EngineSettings
from shimmy.engine.pool import FOREVER, memory_estimate, parse_keep_alive
from shimmy.models.registry import ModelRegistry
from shimmy.sysinfo import total_memory_bytes

NAMES = ("one", "two", "six")  # each spells its own name
LOOPER_CONTEXT = 32768
SLOW_CONTEXT = 1 << 20  # 1.3 GB of KV cache: a load of about a second
EXPIRY_WAIT = 5.0  # generous: a 300 ms keep-alive plus the 0.1 s idle poll

Serve = Callable[..., int]


# --- models and servers ---


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    for name in NAMES:
        write_spelling_model(folder / f"{name}.gguf", name)
    return folder


@pytest.fixture(scope="module")
def looper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("looper")
    write_spelling_model(folder / "looper.gguf", "abcd", eos_after=False,
                         context_length=LOOPER_CONTEXT)
    return folder


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("slow")
    write_spelling_model(folder / "slow.gguf", "slow", context_length=SLOW_CONTEXT)
    return folder


@pytest.fixture
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """Starts ``shimmy serve`` over model folders with more flags (and environment)."""
    started: list[ShimmyProcess] = []

    def start(folders: list[Path], *args: str, **env: str) -> int:
        home = tmp_path_factory.mktemp("home")
        dirs = [arg for folder in folders for arg in ("--model-dirs", str(folder))]
        process = ShimmyProcess([*dirs, "--threads", "1", "--parallel", "1", *args],
                                isolated_env(home, **env), home)
        started.append(process)
        return process.port

    yield start
    for process in started:
        process.stop()


# --- helpers ---


def text(port: int, model: str, path: str = "/api/generate", **fields: Any) -> str:
    status, body = request_json(port, "POST", path, {"model": model, "prompt": "",
                                                     "max_tokens": 8, **fields})
    assert status == 200, body
    return body["choices"][0]["text"]


def listed(port: int) -> dict[str, dict]:
    status, body = request_json(port, "GET", "/api/models")
    assert status == 200
    return {model["id"]: model for model in body["models"]}


def states(port: int) -> dict[str, str]:
    return {name: model["state"] for name, model in listed(port).items()}


def loaded(port: int) -> set[str]:
    return {name for name, state in states(port).items() if state == "loaded"}


def seconds_until(iso: str) -> float:
    return (datetime.fromisoformat(iso) - datetime.now().astimezone()).total_seconds()


def health(port: int, model: str | None = None) -> tuple[int, dict]:
    return request_json(port, "GET", "/api/health" + (f"?model={model}" if model else ""))


def endless_stream(port: int) -> socket.socket:
    """A streamed 30,000-token request on the looper, its first event read: it is running."""
    data = json.dumps({"model": "looper", "prompt": "", "max_tokens": 30000,
                       "ignore_eos": True, "temperature": 0, "stream": True}).encode()
    sock = connect(port, timeout=30)
    sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
                 b"application/json\r\nContent-Length: " + str(len(data)).encode()
                 + b"\r\n\r\n" + data)
    received = b""
    while b"data: " not in received:
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    return sock


def looper_busy(port: int) -> bool:
    return listed(port)["looper"].get("slots", {}).get("busy", 0) > 0


# --- loading, keep-alive and expiry ---


def test_a_model_loads_on_first_use_and_stays_for_the_default_keep_alive(
        serve: Serve, models: Path) -> None:
    port = serve([models])
    before = listed(port)
    assert {name: m["state"] for name, m in before.items()} == dict.fromkeys(NAMES, "available")
    assert not before["two"]["loaded"] and "expires_at" not in before["two"]
    assert health(port)[1]["models_loaded"] == 0

    assert text(port, "two") == "two"
    after = listed(port)["two"]
    assert after["state"] == "loaded" and after["loaded"] is True
    assert 240 < seconds_until(after["expires_at"]) <= 300  # 5 minutes from its last use
    assert loaded(port) == {"two"}
    status, body = health(port)
    assert status == 200 and body["models_loaded"] == 1 and body["loading"] == []
    (running,) = request_json(port, "GET", "/api/ps")[1]["models"]
    assert running["name"] == "two:latest" and 240 < seconds_until(running["expires_at"]) <= 300


def test_idle_models_expire_after_the_keep_alive_and_reload_on_the_next_request(
        serve: Serve, models: Path) -> None:
    port = serve([models], SHIMMY_KEEP_ALIVE="300ms")
    assert text(port, "one") == "one"
    assert wait_until(lambda: states(port)["one"] == "available", EXPIRY_WAIT)
    assert health(port)[1]["models_loaded"] == 0
    assert request_json(port, "GET", "/api/ps")[1] == {"models": []}
    # it comes back, and answers as before, on any route
    assert text(port, "one") == "one"
    assert text(port, "one", "/v1/completions", temperature=0) == "one"
    assert wait_until(lambda: states(port)["one"] == "available", EXPIRY_WAIT)


def test_a_negative_keep_alive_keeps_the_model_until_a_request_says_otherwise(
        serve: Serve, models: Path) -> None:
    port = serve([models], "--keep-alive", "300ms")
    assert text(port, "six", keep_alive=-1) == "six"
    assert text(port, "one") == "one"  # the server's 300 ms
    assert wait_until(lambda: states(port)["one"] == "available", EXPIRY_WAIT)
    time.sleep(0.5)  # well past six's 300 ms too, had it applied
    six = listed(port)["six"]
    assert six["state"] == "loaded" and six["expires_at"] is None
    (running,) = request_json(port, "GET", "/api/ps")[1]["models"]
    assert datetime.fromisoformat(running["expires_at"]).year > 2200  # Ollama's "forever"
    # like Ollama, each request sets the keep-alive: without one, the server's applies
    assert text(port, "six") == "six"
    assert wait_until(lambda: states(port)["six"] == "available", EXPIRY_WAIT)


def test_keep_alive_0_unloads_the_model_after_the_request(serve: Serve, models: Path) -> None:
    port = serve([models], "--keep-alive", "-1")
    assert text(port, "one", keep_alive=0) == "one"
    assert wait_until(lambda: states(port)["one"] == "available", EXPIRY_WAIT)
    assert text(port, "two", "/v1/completions", keep_alive="0s", temperature=0) == "two"
    assert wait_until(lambda: states(port)["two"] == "available", EXPIRY_WAIT)
    status, body = request_json(port, "POST", "/v1/chat/completions", {
        "model": "six", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
        "keep_alive": 0})
    assert status == 200, body
    assert wait_until(lambda: states(port)["six"] == "available", EXPIRY_WAIT)
    assert text(port, "six") == "six"  # and back again, kept this time
    time.sleep(0.5)
    assert loaded(port) == {"six"} and listed(port)["six"]["expires_at"] is None


def test_a_per_request_keep_alive_sets_the_expiry(serve: Serve, models: Path) -> None:
    port = serve([models], "--keep-alive", "300ms")
    assert text(port, "two", keep_alive="1h30m") == "two"
    time.sleep(0.5)
    assert 5300 < seconds_until(listed(port)["two"]["expires_at"]) <= 5400
    (running,) = request_json(port, "GET", "/api/ps")[1]["models"]
    assert 5300 < seconds_until(running["expires_at"]) <= 5400


def test_embeddings_take_keep_alive_too(serve: Serve, tmp_path: Path) -> None:
    write_spelling_model(tmp_path / "embedder.gguf", "one", pooling_type=1)
    port = serve([tmp_path], "--keep-alive", "-1")
    for keep, stays in (("1h", True), (0, False)):
        status, body = request_json(port, "POST", "/v1/embeddings", {
            "model": "embedder", "input": ["one", "two"], "keep_alive": keep})
        assert status == 200 and len(body["data"]) == 2, body
        if stays:
            assert 3500 < seconds_until(listed(port)["embedder"]["expires_at"]) <= 3600
        else:
            assert wait_until(lambda: states(port)["embedder"] == "available", EXPIRY_WAIT)


def test_generate_without_a_prompt_loads_or_unloads_like_ollama(
        serve: Serve, models: Path) -> None:
    port = serve([models], "--keep-alive", "-1")
    status, body = request_json(port, "POST", "/api/generate",
                                {"model": "two", "keep_alive": "10m"})
    assert status == 200, body
    assert body["model"] == "two" and body["done"] is True and body["done_reason"] == "load"
    assert body["state"] == "loaded" and 540 < seconds_until(body["expires_at"]) <= 600
    assert loaded(port) == {"two"}
    status, body = request_json(port, "POST", "/api/generate", {"model": "two", "keep_alive": 0})
    assert status == 200, body
    assert body == {"model": "two", "done": True, "done_reason": "unload", "state": "available"}
    assert loaded(port) == set()  # gone when the answer comes
    # without keep_alive a prompt is still required
    status, body = request_json(port, "POST", "/api/generate", {"model": "two"})
    assert status == 400 and body["error"]["details"] == "'prompt' is required"
    # the same on the WebSocket
    ws = WsClient(port, "/ws/generate")
    try:
        for keep, reason, state in ((-1, "load", "loaded"), (0, "unload", "available")):
            ws.send(TextMessage(json.dumps({"model": "six", "keep_alive": keep})))
            answer = json.loads(ws.receive_text())
            assert answer["done_reason"] == reason and answer["state"] == state
            assert states(port)["six"] == state
    finally:
        ws.close()


# --- making room: --max-models, the memory budget, busy models ---


def test_the_least_recently_used_model_makes_room_under_max_models(
        serve: Serve, models: Path) -> None:
    port = serve([models], "--max-models", "2", "--keep-alive", "-1")
    assert [text(port, name) for name in ("one", "two", "one")] == ["one", "two", "one"]
    assert loaded(port) == {"one", "two"}
    assert text(port, "six") == "six"  # two was used least recently
    assert loaded(port) == {"one", "six"}
    assert text(port, "two") == "two"  # now one is
    assert loaded(port) == {"six", "two"}
    assert health(port)[1]["models_loaded"] == 2


@pytest.mark.parametrize("limit", ["max-models", "memory-budget"])
def test_a_busy_model_is_not_unloaded_to_make_room(
        serve: Serve, models: Path, looper: Path, limit: str) -> None:
    if limit == "max-models":
        args, words = ["--max-models", "1"], "within --max-models 1 while 'looper' is in use"
    else:  # room for the looper and half of another model
        registry = ModelRegistry.from_config(model_dirs=[models, looper], env={})
        settings = EngineSettings(ctx=LOOPER_CONTEXT, parallel=1)
        budget = memory_estimate(registry.resolve("looper"), settings) \
            + memory_estimate(registry.resolve("one"), settings) // 2
        args, words = ["--memory-budget", str(budget), "--max-models", "0"], "memory budget"
    port = serve([looper, models], "--ctx", str(LOOPER_CONTEXT), *args)
    stream = endless_stream(port)
    try:
        assert wait_until(lambda: looper_busy(port))
        status, headers, data = request(port, "POST", "/api/generate",
                                        {"model": "one", "prompt": ""})
        assert status == 503 and headers["retry-after"] == "2"
        error = json.loads(data)["error"]
        assert error["code"] == "server_busy" and words in error["details"], error
        status, headers, data = request(port, "POST", "/v1/completions",
                                        {"model": "one", "prompt": "x"})
        assert status == 503 and headers["retry-after"] == "2"
        assert json.loads(data)["error"]["code"] == "server_busy"  # OpenAI's shape
        assert loaded(port) == {"looper"} and looper_busy(port)
    finally:
        stream.close()  # cancels the generation: the looper is idle again
    assert wait_until(lambda: not looper_busy(port))
    assert text(port, "one") == "one"
    assert loaded(port) == {"one"}


def test_the_memory_budget_unloads_the_least_recently_used(
        serve: Serve, models: Path, looper: Path) -> None:
    registry = ModelRegistry.from_config(model_dirs=[models, looper], env={})
    settings = EngineSettings(parallel=1)  # the server's --ctx default, --parallel 1
    need = memory_estimate(registry.resolve("one"), settings)
    budget = need * 5 // 2  # room for two of the tiny models
    assert memory_estimate(registry.resolve("looper"), settings) > budget
    port = serve([models, looper], "--memory-budget", str(budget), "--max-models", "0",
                 "--keep-alive", "-1")
    assert listed(port)["one"]["memory_estimate"] == need
    assert text(port, "one") == "one" and text(port, "two") == "two"
    assert loaded(port) == {"one", "two"}
    assert text(port, "six") == "six"
    assert loaded(port) == {"two", "six"}
    # a model bigger than the whole budget is refused, and unloads nothing in vain
    status, body = request_json(port, "POST", "/api/generate", {"model": "looper", "prompt": ""})
    assert status == 500 and body["error"]["code"] == "generation_failed"
    assert "memory budget" in body["error"]["details"]
    assert loaded(port) == {"two", "six"}


# --- /api/health while a model loads ---


def test_health_answers_503_loading_for_the_model_being_loaded(
        serve: Serve, models: Path, slow: Path) -> None:
    port = serve([slow, models], "--ctx", str(SLOW_CONTEXT))
    status, body = health(port, "slow")
    assert status == 200 and body["state"] == "available" and body["status"] == "healthy"
    result: dict[str, str] = {}
    loader = threading.Thread(target=lambda: result.update(text=text(port, "slow")))
    loader.start()
    seen: set[tuple] = set()
    fractions: list[float] = []
    while loader.is_alive():
        status, body = health(port, "slow")
        seen.add(("slow", status, body["status"], body["state"]))
        if body["state"] == "loading":
            fractions.append(body["progress"])
        status, body = health(port, "one")  # another model is not affected
        seen.add(("one", status, body["status"], body["state"]))
        status, body = health(port)
        seen.add(("server", status, body["status"], tuple(body["loading"])))
        seen.add(("models", listed(port)["slow"]["state"]))
    loader.join()
    assert result["text"] == "slow"
    assert ("slow", 503, "loading", "loading") in seen
    # the share of the weights read: between 0 and 1, never going back
    assert fractions and all(0.0 <= f <= 1.0 for f in fractions), fractions
    assert fractions == sorted(fractions)
    assert ("server", 200, "healthy", ("slow",)) in seen
    assert ("models", "loading") in seen
    assert ("one", 200, "healthy", "available") in seen
    assert not {entry for entry in seen if entry[0] == "one" and entry[1] != 200}
    status, body = health(port, "slow")
    assert status == 200 and body["status"] == "healthy" and body["state"] == "loaded"
    assert body["loading"] == [] and body["models_loaded"] == 1
    status, body = health(port, "nope")
    assert status == 404 and body["error"]["code"] == "model_not_found"


# --- what is accepted ---


@pytest.mark.parametrize("value", ["soon", "5 minutes", "", "1d", "5m3", True, [1], {"s": 1}])
def test_an_invalid_keep_alive_is_400_in_each_family(serve_once: int, value: Any) -> None:
    port = serve_once
    status, body = request_json(port, "POST", "/api/generate",
                                {"model": "one", "prompt": "", "keep_alive": value})
    assert status == 400 and body["error"]["code"] == "invalid_request"
    assert "'keep_alive'" in body["error"]["details"]
    for path, extra in (("/v1/completions", {"prompt": "x"}),
                        ("/v1/chat/completions", {"messages": [{"role": "user",
                                                               "content": "hi"}]})):
        status, body = request_json(port, "POST", path,
                                    {"model": "one", "keep_alive": value, **extra})
        assert status == 400 and body["error"]["param"] == "keep_alive", body
        assert body["error"]["type"] == "invalid_request_error"
    assert loaded(port) == set()  # refused before anything was loaded


@pytest.fixture(scope="module")
def serve_once(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    home = tmp_path_factory.mktemp("home")
    process = ShimmyProcess(["--model-dirs", str(models), "--threads", "1"],
                            isolated_env(home), home)
    yield process.port
    process.stop()


@pytest.mark.parametrize(("value", "seconds"), [
    ("30s", 30), ("5m", 300), ("1h30m", 5400), ("300ms", 0.3), ("1.5h", 5400), ("45", 45),
    (45, 45), (2.5, 2.5), (0, 0), ("0", 0), ("0s", 0), (-1, FOREVER), ("-5m", FOREVER),
    ("-1", FOREVER), (1e20, FOREVER),
])
def test_keep_alive_durations(value: Any, seconds: float) -> None:
    assert math.isclose(parse_keep_alive(value), seconds)


@pytest.mark.parametrize(("text", "size"), [
    ("8GiB", 8 << 30), ("8g", 8 << 30), ("512M", 512 << 20), ("8GB", 8 * 10**9),
    ("10kb", 10_000), ("1.5KiB", 1536), ("100", 100), ("0", 0),
])
def test_memory_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_a_percentage_is_of_physical_memory() -> None:
    assert parse_size("50%") == int(total_memory_bytes() * 0.5)


@pytest.mark.parametrize(("args", "env", "words"), [
    (["--keep-alive", "soon"], {}, "--keep-alive 'soon'"),
    (["--max-models", "-1"], {}, "--max-models '-1'"),
    (["--memory-budget", "lots"], {}, "--memory-budget 'lots'"),
    ([], {"SHIMMY_KEEP_ALIVE": "5x"}, "SHIMMY_KEEP_ALIVE '5x'"),
    ([], {"SHIMMY_MAX_MODELS": "many"}, "SHIMMY_MAX_MODELS 'many'"),
    ([], {"SHIMMY_MEMORY_BUDGET": "200%"}, "SHIMMY_MEMORY_BUDGET '200%'"),
])
def test_bad_pool_settings_are_usage_errors(args: list[str], env: dict[str, str], words: str,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["serve", *args]) == 2
    assert f"error: {words}" in capsys.readouterr().err
