"""A server over a folder of models: a deterministic tiny model, a broken one, junk.

The tiny "spelling" model writes every non-ASCII character as several byte tokens, so it
shows that streamed text never carries half a character and that stop strings are held
back across tokens.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import WsClient, request_json, sse_events
from conftest import ShimmyProcess, isolated_env
from gguf_factory import write_gguf
from tiny_model import BOS, byte_token, write_redirect_lora, write_spelling_model
from wsproto.events import TextMessage

TEXT = "Ω:wö 😀中!"  # every byte distinct: the tiny model can spell it


@pytest.fixture(scope="module")
def models_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShimmyProcess]:
    home = tmp_path_factory.mktemp("home")
    models = tmp_path_factory.mktemp("models")
    write_spelling_model(models / "Spell.gguf", TEXT)
    write_spelling_model(models / "parts.gguf", TEXT, split_max_tensors=4)  # three shards
    write_gguf(models / "broken.gguf")  # a readable header llama.cpp cannot load
    (models / "junk.gguf").write_bytes(os.urandom(4096))
    process = ShimmyProcess(["--model-dirs", str(models), "--threads", "1", "--ctx", "256"],
                            isolated_env(home), home)
    yield process
    process.stop()


def generate(port: int, **fields) -> tuple[int, dict]:
    return request_json(port, "POST", "/api/generate", {"model": "spell", **fields})


def stream(port: int, **fields) -> tuple[list[str], dict]:
    events = list(sse_events(port, "/api/generate", {"model": "spell", "stream": True, **fields}))
    assert events[-1] == "[DONE]"
    *pieces, final = events[:-1]
    return [event["choices"][0]["text"] for event in pieces], final


def test_listing_has_real_models_only(models_server: ShimmyProcess) -> None:
    status, body = request_json(models_server.port, "GET", "/api/models")
    assert status == 200
    assert sorted(model["id"] for model in body["models"]) == ["broken", "parts", "spell"]
    (parts,) = [model for model in body["models"] if model["id"] == "parts"]
    assert len(parts["shards"]) == 3 and parts["path"].endswith("parts-00001-of-00003.gguf")


def test_split_model_loads_from_its_first_shard(models_server: ShimmyProcess) -> None:
    status, body = request_json(models_server.port, "POST", "/api/generate",
                                {"model": "parts", "prompt": "", "temperature": 0})
    assert status == 200, body
    assert body["choices"][0]["text"] == TEXT


def test_greedy_output_is_exact(models_server: ShimmyProcess) -> None:
    status, body = generate(models_server.port, prompt="", temperature=0, max_tokens=50)
    assert status == 200, body
    (choice,) = body["choices"]
    assert choice["text"] == TEXT
    assert choice["finish_reason"] == "stop"  # the model's end-of-generation token
    assert body["usage"]["completion_tokens"] == len(TEXT.encode()) + 1


def test_streamed_pieces_are_whole_characters(models_server: ShimmyProcess) -> None:
    pieces, final = stream(models_server.port, prompt="", temperature=0, max_tokens=50)
    assert "".join(pieces) == TEXT
    assert all("\ufffd" not in piece for piece in pieces)
    # each multi-byte character arrives inside a single piece, never split
    assert "😀" in pieces and "中" in pieces and "ö" in pieces
    assert final["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("stop", "expected"),
    [("😀", "Ω:wö "), ("wö", "Ω:"), (["x", "中!"], "Ω:wö 😀"), ("wörx", TEXT)],
)
def test_stop_strings_across_byte_tokens(models_server: ShimmyProcess, stop, expected) -> None:
    pieces, final = stream(models_server.port, prompt="", temperature=0, max_tokens=50, stop=stop)
    assert "".join(pieces) == expected
    assert final["choices"][0]["finish_reason"] == "stop"


def test_length_cut_inside_a_character_drops_the_fragment(models_server: ShimmyProcess) -> None:
    # "Ω:wö " is 7 bytes; the 8th token is the first of the emoji's four bytes
    status, body = generate(models_server.port, prompt="", temperature=0, max_tokens=8)
    assert status == 200
    assert body["choices"][0] == {"text": "Ω:wö ", "index": 0, "finish_reason": "length"}


def test_websocket_tokens_are_whole_characters(models_server: ShimmyProcess) -> None:
    client = WsClient(models_server.port, "/ws/generate")
    client.sock.settimeout(30)
    client.send(TextMessage(data=json.dumps(
        {"model": "spell", "prompt": "", "temperature": 0, "max_tokens": 50})))
    tokens = []
    while "token" in (frame := json.loads(client.receive_text())):
        tokens.append(frame["token"])
    client.close()
    assert "".join(tokens) == TEXT and "😀" in tokens
    assert frame["done"] is True and frame["finish_reason"] == "stop"


def test_broken_model_is_a_clear_error_and_the_server_survives(
        models_server: ShimmyProcess) -> None:
    for _ in range(2):  # a failed load is not cached as loaded
        status, body = request_json(models_server.port, "POST", "/api/generate",
                                    {"model": "broken", "prompt": "x"})
        assert status == 500, body
        assert body["error"]["code"] == "generation_failed"
        assert "broken" in body["error"]["message"]
        assert body["error"]["details"]
    status, health = request_json(models_server.port, "GET", "/api/health")
    assert status == 200 and health["status"] == "healthy"
    status, body = generate(models_server.port, prompt="", temperature=0, max_tokens=50)
    assert status == 200 and body["choices"][0]["text"] == TEXT


def test_model_path_flag_serves_exactly_that_file(tmp_path: Path) -> None:
    model = write_spelling_model(tmp_path / "solo.gguf", TEXT)
    process = ShimmyProcess(["--model-path", str(model), "--threads", "1", "--ctx", "256"],
                            isolated_env(tmp_path), tmp_path)
    try:
        status, body = request_json(process.port, "GET", "/api/models")
        assert [m["id"] for m in body["models"]] == ["solo"]
        status, body = request_json(process.port, "POST", "/api/generate",
                                    {"model": "default", "prompt": "", "temperature": 0})
        assert status == 200 and body["choices"][0]["text"] == TEXT
    finally:
        process.stop()


def test_lora_next_to_its_base_is_applied_not_listed(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_spelling_model(models / "base.gguf", TEXT)
    # after <s> the adapter jumps to the third byte of the text, skipping "Ω"
    third = byte_token(TEXT.encode()[2])
    write_redirect_lora(models / "base-redirect.gguf", after=BOS, goes_to=third)
    process = ShimmyProcess(["--model-dirs", str(models), "--threads", "1", "--ctx", "256"],
                            isolated_env(tmp_path), tmp_path)
    try:
        _, listing = request_json(process.port, "GET", "/api/models")
        assert [m["id"] for m in listing["models"]] == ["base"]
        assert listing["models"][0]["loras"][0].endswith("base-redirect.gguf")
        status, body = request_json(process.port, "POST", "/api/generate",
                                    {"model": "base", "prompt": "", "temperature": 0})
        assert status == 200, body
        assert body["choices"][0]["text"] == TEXT.encode()[2:].decode()
    finally:
        process.stop()
