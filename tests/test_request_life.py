"""A request's life through a served model: multi-prompt requests admitted whole or not
at all, prompts tokenized off the event loop, and a soak of hang-ups, cancellations and
injected decode failures that ends with nothing leaked and correct answers."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clients import connect, request, request_json
from conftest import ShimmyProcess, isolated_env, wait_until
from test_metrics import metric
from tiny_model import write_spelling_model

from shimmy.api.native import NativeApi
from shimmy.api.openai.completions import Completions
from shimmy.api.params import generate_params
from shimmy.api.state import AppState
from shimmy.chat import prompt as prompts
from shimmy.chat.request import ChatRequest
from shimmy.chat.run import start_chat
from shimmy.engine.loaded import FAIL_DECODE_ENV, EngineSettings, LoadedModel
from shimmy.engine.pool import ModelPool
from shimmy.models.registry import ModelRegistry

ENDLESS = {"max_tokens": 3000, "ignore_eos": True, "temperature": 0}


@pytest.fixture(scope="module")
def looper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("looper")
    write_spelling_model(folder / "looper.gguf", "abcd", eos_after=False, context_length=4096)
    return folder


@pytest.fixture(scope="module")
def one_slot(looper_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    home = tmp_path_factory.mktemp("home")
    server = ShimmyProcess(["--model-dirs", str(looper_dir), "--parallel", "1",
                            "--max-queue", "1", "--threads", "1"], isolated_env(home), home)
    yield server.port
    server.stop()


def outstanding(port: int) -> float:
    return (metric(port, "shimmy_slots_active", model="looper")
            + metric(port, "shimmy_queue_depth", model="looper"))


def test_a_multi_prompt_request_counts_whole_against_the_queue(one_slot: int) -> None:
    status, body = request_json(one_slot, "POST", "/v1/completions",
                                {"model": "looper", "prompt": ["a", "b", "c"], "max_tokens": 2})
    assert status == 503, body  # three prompts: one slot and a queue of one hold two
    assert outstanding(one_slot) == 0
    status, body = request_json(one_slot, "POST", "/v1/completions",
                                {"model": "looper", "prompt": ["a", "b"], "max_tokens": 2})
    assert status == 200 and len(body["choices"]) == 2


def test_a_multi_prompt_request_with_a_bad_prompt_starts_none(one_slot: int) -> None:
    status, body = request_json(one_slot, "POST", "/v1/completions",
                                {"model": "looper", "prompt": ["a", [10 ** 7]], **ENDLESS})
    assert status == 400, body
    time.sleep(0.3)
    assert outstanding(one_slot) == 0  # the good first prompt was never queued


def test_prompts_are_tokenized_off_the_event_loop(looper_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    registry = ModelRegistry.from_config(model_dirs=[looper_dir], env={})
    state = AppState(registry=registry, pool=ModelPool(registry, EngineSettings(ctx=512,
                                                                               parallel=2)))
    threads: list[str] = []
    real = LoadedModel.tokenize

    def spied(self: LoadedModel, text: str, special: bool = False) -> list[int]:
        threads.append(threading.current_thread().name)
        return real(self, text, special)

    monkeypatch.setattr(LoadedModel, "tokenize", spied)

    async def scenario() -> None:
        loop_thread = threading.current_thread().name
        job = await Completions(state).start(
            {"model": "looper", "prompt": ["ab", "cd"], "max_tokens": 2}, False)
        _, generation = await NativeApi(state)._start(
            generate_params({"model": "looper", "prompt": "abc", "max_tokens": 2}))
        for item in [choice.generation for choice in job.choices] + [generation]:
            await asyncio.wait_for(item.text(), 30)
        assert len(threads) == 3 and loop_thread not in threads
        await state.pool.aclose()

    asyncio.run(scenario())


def test_chat_prompts_are_rendered_off_the_event_loop(looper_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    registry = ModelRegistry.from_config(model_dirs=[looper_dir], env={})
    pool = ModelPool(registry, EngineSettings(ctx=512, parallel=2))
    threads: list[str] = []
    real = prompts.render

    def spied(model: LoadedModel, chat: ChatRequest) -> tuple[str, list[int]]:
        threads.append(threading.current_thread().name)
        return real(model, chat)

    monkeypatch.setattr(prompts, "render", spied)

    async def scenario() -> None:
        loop_thread = threading.current_thread().name
        model = await pool.get("looper")
        run = await start_chat(model, ChatRequest(
            messages=[{"role": "user", "content": "abc"}], max_tokens=2))
        await asyncio.wait_for(run.result(), 30)
        assert len(threads) == 1 and loop_thread not in threads
        await pool.aclose()

    asyncio.run(scenario())


# --- the soak ---

PROMPTS = ["The river runs to the sea because", "Mountains rise when",
           "The river runs to the sea and the city", "A garden in the desert"]
SOAK_SECONDS = 15.0


def ask(port: int, prompt: str, max_tokens: int = 24) -> tuple[int, Any]:
    return request_json(port, "POST", "/api/generate",
                        {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0})


def answer(port: int, prompt: str) -> str:
    """The greedy text, asked again while an injected failure gets in the way."""
    for _ in range(10):
        status, body = ask(port, prompt)
        if status == 200:
            return body["choices"][0]["text"]
        assert status == 500 and "llama_decode failed" in json.dumps(body), body
    raise AssertionError("ten failures in a row")


def hang_up_after(port: int, body: dict, chunks: int) -> None:
    data = json.dumps({**body, "stream": True}).encode()
    sock = connect(port, timeout=30)
    sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                 b"\r\nContent-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    received = b""
    while received.count(b"data: ") < chunks:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def client(port: int, seed: int, deadline: float, failures: list[str]) -> None:
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        prompt = rng.choice(PROMPTS) + " " * rng.randint(0, 2)
        action = rng.random()
        try:
            if action < 0.35:
                hang_up_after(port, {"prompt": prompt, **ENDLESS}, rng.randint(0, 6))
            elif action < 0.5:
                status, _, _ = request(port, "POST", "/v1/completions",
                                       {"prompt": [prompt, prompt[:12]], "max_tokens": 8},
                                       timeout=60)
                assert status in (200, 500, 503), status
            else:
                status, _ = ask(port, prompt, rng.randint(1, 16))
                assert status in (200, 500, 503), status
        except Exception as exc:  # noqa: BLE001 - collected for the main thread
            failures.append(f"{type(exc).__name__}: {exc}")
            return


def test_a_soak_of_hang_ups_and_decode_failures_leaks_nothing(
        model_path: Path, tmp_path: Path) -> None:
    env = isolated_env(tmp_path, **{FAIL_DECODE_ENV: "60:97:12"})
    server = ShimmyProcess(["--model-path", str(model_path), "--parallel", "4",
                            "--max-queue", "4", "--prompt-cache", "64MiB"], env, tmp_path)
    try:
        port = server.port
        expected = {prompt: answer(port, prompt) for prompt in PROMPTS}
        deadline = time.monotonic() + SOAK_SECONDS
        failures: list[str] = []
        clients = [threading.Thread(target=client, args=(port, seed, deadline, failures))
                   for seed in range(6)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(SOAK_SECONDS + 90)
            assert not thread.is_alive(), "a client hung"
        assert failures == []
        name = request_json(port, "GET", "/api/models")[1]["models"][0]["id"]
        assert wait_until(lambda: metric(port, "shimmy_slots_active", model=name) == 0
                          and metric(port, "shimmy_queue_depth", model=name) == 0, timeout=10)
        assert metric(port, "shimmy_scheduler_up", model=name) == 1
        for prompt in PROMPTS:
            assert answer(port, prompt) == expected[prompt]
    finally:
        out = server.stop()
    assert "decode failed" in out  # the failures were injected
    assert "Traceback" not in out and "scheduler of" not in out
