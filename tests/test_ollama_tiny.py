"""The Ollama listener with tiny test models: fill-in-the-middle (Continue's autocomplete),
embeddings, the access rules it shares with shimmy's port, and a taken address."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import ollama
import pytest
from clients import request
from conftest import ShimmyProcess, isolated_env
from tiny_model import byte_token, write_spelling_model

TEXT = "Ω:wö 😀中!"
KEY = "sk-ollama-test"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShimmyProcess]:
    home = tmp_path_factory.mktemp("home")
    models = tmp_path_factory.mktemp("models")
    markers = tuple(byte_token(b) for b in b"#$%")  # FIM tokens: bytes not in TEXT
    write_spelling_model(models / "infiller.gguf", TEXT, fim_tokens=markers)
    write_spelling_model(models / "embedder.gguf", TEXT, pooling_type=1)
    process = ShimmyProcess(["--model-dirs", str(models), "--threads", "1", "--ctx", "256",
                             "--api-key", KEY, "--ollama-bind", "127.0.0.1:0"],
                            isolated_env(home), home)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(tiny: ShimmyProcess) -> ollama.Client:
    return ollama.Client(host=f"http://127.0.0.1:{tiny.ollama_port}", headers=AUTH)


def test_generate_with_suffix_fills_in_the_middle(client: ollama.Client) -> None:
    answer = client.generate(model="infiller", prompt="f(x", suffix="):",
                             options={"temperature": 0})
    assert answer.response == TEXT and answer.done_reason == "stop"
    # BOS, <pre>, 3 prefix bytes, <suf>, 2 suffix bytes, <mid>
    assert answer.prompt_eval_count == 1 + 1 + 3 + 1 + 2 + 1
    assert "insert" in client.show("infiller").capabilities
    assert ".Suffix" in client.show("infiller").template  # how Continue detects FIM


def test_continue_fim_autocomplete(tiny: ShimmyProcess) -> None:
    """Continue's ``_streamFim`` request as it sends it: prefix, suffix, its options,
    ``keep_alive`` 1800, streamed by default, read line by line."""
    payload = {"model": "infiller:latest", "prompt": "def f(x", "suffix": "):\n",
               "options": {"temperature": 0.01, "num_predict": 256, "stop": ["\n\n"],
                           "num_ctx": 8192}, "keep_alive": 1800}
    status, headers, body = request(tiny.ollama_port, "POST", "/api/generate", payload,
                                    headers={**AUTH, "Content-Type": "application/json"})
    assert status == 200 and headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in body.splitlines()]
    assert "".join(line["response"] for line in lines) == TEXT
    assert lines[-1]["done"] and lines[-1]["done_reason"] == "stop"


def test_embed_and_the_older_embeddings(client: ollama.Client) -> None:
    answer = client.embed(model="embedder", input=["ab", "xyz", "ab"])
    first, second, third = answer.embeddings
    assert first == pytest.approx(third) and first != pytest.approx(second)
    assert sum(x * x for x in first) == pytest.approx(1.0, abs=1e-4)
    assert answer.prompt_eval_count > 0 and answer.total_duration > 0
    cut = client.embed(model="embedder", input="ab", dimensions=8).embeddings[0]
    assert len(cut) == 8 and sum(x * x for x in cut) == pytest.approx(1.0, abs=1e-4)
    single = client.embeddings(model="embedder", prompt="ab").embedding
    assert single == pytest.approx(first, abs=1e-6)
    assert "embedding" in client.show("embedder").capabilities


def test_embed_without_truncation_refuses_a_long_input(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.embed(model="embedder", input="ab" * 400, truncate=False)
    assert caught.value.status_code == 400 and "context length" in caught.value.error
    assert len(client.embed(model="embedder", input="ab" * 400).embeddings[0]) > 0


def test_the_key_is_required_on_the_ollama_listener(tiny: ShimmyProcess) -> None:
    status, _, body = request(tiny.ollama_port, "GET", "/api/tags")
    assert status == 401 and set(json.loads(body)) == {"error"}
    with pytest.raises(ollama.ResponseError) as caught:
        ollama.Client(host=f"http://127.0.0.1:{tiny.ollama_port}").list()
    assert caught.value.status_code == 401
    assert request(tiny.ollama_port, "GET", "/")[0] == 200  # the probe holds no data
    assert request(tiny.ollama_port, "GET", "/api/tags", headers=AUTH)[0] == 200


def test_the_host_allowlist_applies_too(tiny: ShimmyProcess) -> None:
    status, _, body = request(tiny.ollama_port, "GET", "/api/tags",
                              headers={**AUTH, "Host": "rebind.example"})
    assert status == 403 and "Host" in json.loads(body)["error"]
    status, _, _ = request(tiny.ollama_port, "GET", "/api/tags",
                           headers={**AUTH, "Origin": "http://evil.example"})
    assert status == 403


def test_a_taken_address_is_one_line_and_shimmy_serves_on(tmp_path: Path) -> None:
    write_spelling_model(tmp_path / "models" / "speller.gguf", TEXT)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        # "off" first: ShimmyProcess then reads no Ollama banner; the last flag wins
        process = ShimmyProcess(["--model-dirs", str(tmp_path / "models"), "--threads", "1",
                                 "--ollama-bind", "off", "--ollama-bind", address],
                                isolated_env(tmp_path), tmp_path)
        try:
            line = process.proc.stdout.readline()  # the line right after the banner
            status, _, _ = request(process.port, "GET", "/api/tags")
            assert status == 200
        finally:
            out = process.stop()
    assert line == f"shimmy: no Ollama API on {address}: the address is in use (is Ollama " \
        "running?); --ollama-bind HOST:PORT moves it\n"
    assert "Ollama" not in out and "Traceback" not in out
