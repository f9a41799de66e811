"""What Claude Code sends and expects: ``HEAD /``, ``?beta=true`` with its headers and
fields, ``count_tokens``, ``claude-…`` model names and ``--model-alias``, and the error
it shows when a prompt does not fit the context."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
from clients import request, request_json
from conftest import REPO, ShimmyProcess, isolated_env
from test_anthropic_agent import WEATHER
from test_api_anthropic import MODEL, sse_events

CAPTURED = REPO / "tests" / "data" / "agents" / "claude-code-first-request.json"
BETA_HEADERS = {
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,"
                      "context-management-2025-06-27",
    "x-claude-code-session-id": "0b5c6d1e-session",
    "x-api-key": "anything",
}
# the fields of Claude Code's first request that a local server accepts and ignores
CLAUDE_FIELDS = {
    "system": [{"type": "text", "text": "You are Claude Code.",
                "cache_control": {"type": "ephemeral"}}],
    "tools": [{**WEATHER, "cache_control": {"type": "ephemeral"}}],
    "metadata": {"user_id": "user_abc_account__session_0b5c"},
    "thinking": {"type": "adaptive"},
    "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    "output_config": {"effort": "medium"},
    "service_tier": "auto",
    "temperature": 1,
}
ASK = [{"role": "user", "content": [{"type": "text", "text": "Say hello.",
                                     "cache_control": {"type": "ephemeral"}}]}]


@pytest.fixture
def client(port: int) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key="x",
                               max_retries=0, timeout=120)


def test_head_probe_of_the_root(port: int) -> None:
    status, headers, body = request(port, "HEAD", "/")
    assert status == 200 and body == b""


def test_beta_path_with_claude_code_headers_and_fields(port: int) -> None:
    body = {"model": "claude-sonnet-4-5-20250929", "max_tokens": 32000, "messages": ASK,
            **CLAUDE_FIELDS}
    status, _, raw = request(port, "POST", "/v1/messages?beta=true",
                             {**body, "max_tokens": 6}, headers=BETA_HEADERS)
    assert status == 200, raw
    assert json.loads(raw)["model"] == MODEL
    events = list(sse_events(port, {**body, "max_tokens": 6}, "/v1/messages?beta=true",
                             BETA_HEADERS))
    assert events[0][0] == "message_start" and events[-1][0] == "message_stop"
    assert events[0][1]["message"]["usage"]["input_tokens"] > 0


def test_beta_client_and_count_tokens(client: anthropic.Anthropic) -> None:
    fields = {"model": MODEL, "messages": ASK, "system": "Be brief.", "tools": [WEATHER]}
    counted = client.messages.count_tokens(**fields)
    beta = client.beta.messages.count_tokens(**fields, betas=["token-counting-2024-11-01"])
    assert counted.input_tokens == beta.input_tokens > 0
    without_tools = client.messages.count_tokens(model=MODEL, messages=ASK, system="Be brief.")
    assert without_tools.input_tokens < counted.input_tokens  # the tools are in the prompt
    message = client.beta.messages.create(max_tokens=2, betas=["claude-code-20250219"],
                                          **fields)
    usage = message.usage
    assert usage.input_tokens + usage.cache_read_input_tokens == counted.input_tokens


def test_count_tokens_errors_in_anthropic_shape(port: int) -> None:
    status, body = request_json(port, "POST", "/v1/messages/count_tokens?beta=true",
                                {"model": MODEL, "messages": [{"role": "user", "content": [
                                    {"type": "image", "source": {}}]}]})
    assert status == 400 and body["type"] == "error"
    assert "'image'" in body["error"]["message"]


@pytest.mark.skipif(not CAPTURED.exists(), reason="no captured Claude Code request yet")
def test_the_captured_first_request_of_claude_code(port: int) -> None:
    captured = json.loads(CAPTURED.read_text())
    body = {**captured["body"], "model": "claude-sonnet-4-5"}  # captured with --model NAME
    headers = {name: value for name, value in captured["headers"].items()
               if name.lower() not in ("host", "content-length", "accept-encoding")}
    status, counted = request_json(port, "POST", "/v1/messages/count_tokens?beta=true",
                                   {k: v for k, v in body.items() if k != "max_tokens"})
    assert status == 200, counted
    assert counted["input_tokens"] > 1000
    status, _, raw = request(port, "POST", "/v1/messages?beta=true", {**body, "stream": False},
                             headers=headers)
    answer = json.loads(raw)
    if counted["input_tokens"] >= 8192:  # the test server's context: Claude Code's error
        assert status == 400, answer
        assert answer["error"]["message"].startswith(
            f"prompt is too long: {counted['input_tokens']} tokens > 8192 maximum")
    else:
        assert status == 200, answer


# --- a server with aliases and a small context ---


def read_available(process: ShimmyProcess, wait: float = 0.5) -> str:
    """What the server has logged since the last read."""
    out = b""
    stream = process.proc.stdout
    while select.select([stream], [], [], wait)[0]:
        chunk = os.read(stream.fileno(), 65536)
        if not chunk:
            break
        out += chunk
        wait = 0.1
    return out.decode()


@pytest.fixture(scope="module")
def aliased(model_path: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[ShimmyProcess]:
    home = tmp_path_factory.mktemp("aliases")
    process = ShimmyProcess(
        ["--model-path", str(model_path), "--ctx", "512", "--parallel", "1",
         "--model-alias", "claude-haiku-*=default", "--model-alias", f"my-coder={MODEL}",
         "--model-alias", "gpt-4*=missing-model"],
        isolated_env(home), home)
    yield process
    process.stop()


def messages(port: int, model: str, content: Any = "Hi", **extra: Any) -> tuple[int, Any]:
    return request_json(port, "POST", "/v1/messages", {
        "model": model, "max_tokens": 2, "messages": [{"role": "user", "content": content}],
        **extra})


def test_aliases_resolve_for_every_api(aliased: ShimmyProcess) -> None:
    port = aliased.port
    for name in ("claude-haiku-4-5-20251001", "my-coder", "MY-CODER"):
        status, body = messages(port, name)
        assert status == 200 and body["model"] == MODEL, body
    status, body = request_json(port, "POST", "/v1/chat/completions", {
        "model": "my-coder", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]})
    assert status == 200, body
    status, body = request_json(port, "POST", "/api/generate",
                                {"model": "claude-haiku-x", "prompt": "Hi", "max_tokens": 1})
    assert status == 200, body
    status, body = messages(port, "gpt-4o")
    assert status == 404 and body["error"]["type"] == "not_found_error"
    assert "alias of 'missing-model'" in body["error"]["message"]


def test_models_list_literal_aliases(aliased: ShimmyProcess) -> None:
    status, body = request_json(aliased.port, "GET", "/v1/models")
    assert status == 200
    assert [model["id"] for model in body["data"]] == [MODEL, "my-coder"]
    status, body = request_json(aliased.port, "GET", "/v1/models/my-coder")
    assert status == 200 and body["id"] == "my-coder"


def test_unmapped_claude_names_use_the_default_and_say_so_once(aliased: ShimmyProcess
                                                                ) -> None:
    read_available(aliased, 0.05)
    for _ in range(2):
        status, body = messages(aliased.port, "claude-opus-4-1")
        assert status == 200 and body["model"] == MODEL
    log = read_available(aliased)
    assert log.count("'claude-opus-4-1' is served by the default model") == 1, log


def test_too_long_prompt_gets_anthropic_error_with_sizes(aliased: ShimmyProcess) -> None:
    for stream in (False, True):
        status, body = messages(aliased.port, MODEL, "word " * 700, stream=stream)
        assert status == 400 and body["type"] == "error"
        assert body["error"]["type"] == "invalid_request_error"
        message = body["error"]["message"]
        assert message.startswith("prompt is too long: ") and "tokens > 512 maximum" in message
        assert "--ctx" in message


def test_max_tokens_beyond_the_context_is_clamped(aliased: ShimmyProcess) -> None:
    status, body = messages(aliased.port, MODEL, max_tokens=32000, stop_sequences=["."])
    assert status == 200 and body["stop_reason"] in ("end_turn", "stop_sequence",
                                                     "max_tokens"), body


def test_a_bad_alias_stops_serve_with_the_reason(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "shimmy", "serve", "--model-alias", "claude"],
                          capture_output=True, text=True, env=isolated_env(tmp_path),
                          timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    assert "--model-alias 'claude': expected PATTERN=MODEL" in done.stderr
