"""The first requests of Claude Code and Codex CLI, replayed against ``shimmy serve``.

tests/data/agents holds them as scripts/capture_agent_request.py recorded them (path with
its query string, headers, JSON body). Each is sent as it is, with one change where
noted: the answer's length is capped, since the embedded base model may not stop by
itself. The streams must then parse as the protocol's: Anthropic's message events,
or the Responses API's numbered events from ``response.created`` to
``response.completed`` (or ``response.incomplete`` when the cap cut it short).
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import agent_clis
import pytest
from clients import request
from conftest import ShimmyProcess

DATA = Path(__file__).parent / "data" / "agents"
READ_TIMEOUT = 1200  # seconds: the embedded model reads a 20k-token prompt for minutes
CAP = 48  # tokens an answer may take
ANTHROPIC_STOPS = {"end_turn", "max_tokens", "stop_sequence", "tool_use"}
# Headers that http.client writes itself.
OWN_HEADERS = {"host", "content-length", "connection", "accept-encoding"}


def captured(name: str) -> dict[str, Any]:
    return json.loads((DATA / name).read_text())


CLAUDE = captured("claude-code-first-request.json")
CODEX = captured("codex-first-request.json")


@pytest.fixture(scope="module")
def agent_server(model_path: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShimmyProcess]:
    process = agent_clis.serve_for_agents(model_path, tmp_path_factory.mktemp("replay-server"))
    yield process
    process.stop()


def replay(port: int, capture: dict[str, Any],
           body: dict[str, Any]) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """Send the captured request with ``body``; yield ``(event name, data)`` per SSE event."""
    headers = {k: v for k, v in capture["headers"].items() if k.lower() not in OWN_HEADERS}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=READ_TIMEOUT)
    try:
        conn.request(capture["method"], capture["path"], body=json.dumps(body).encode(),
                     headers=headers)
        response = conn.getresponse()
        assert response.status == 200, (response.status, response.read()[:2000])
        assert response.getheader("content-type", "").startswith("text/event-stream")
        yield from sse(response)
    finally:
        conn.close()


def sse(lines: Any) -> Iterator[tuple[str | None, dict[str, Any]]]:
    name, data = None, []
    for raw in lines:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("event:"):
            name = line[len("event:"):].strip()
        elif line.startswith("data:"):
            data.append(line[len("data:"):].strip())
        elif not line and data:
            text = "\n".join(data)
            if text != "[DONE]":
                yield name, json.loads(text)
            name, data = None, []


# ---- what the captures hold (the server team's reference)


def test_captures_are_first_turns_of_the_pinned_clis() -> None:
    assert CLAUDE["method"] == "POST" and CLAUDE["path"] == "/v1/messages?beta=true"
    assert CLAUDE["headers"]["user-agent"].startswith(f"claude-cli/{agent_clis.CLAUDE_CODE[1]}")
    assert CLAUDE["body"]["stream"] is True and len(CLAUDE["body"]["tools"]) >= 20
    assert CODEX["method"] == "POST" and CODEX["path"] == "/v1/responses"
    assert f"/{agent_clis.CODEX[1]}" in CODEX["headers"]["user-agent"]
    assert CODEX["body"]["stream"] is True and CODEX["body"]["tools"]
    for capture in (CLAUDE, CODEX):
        assert capture["body"]["model"] == agent_clis.CAPTURED_MODEL
        assert "/root/" not in json.dumps(capture) and "/tmp/tmp" not in json.dumps(capture)


# ---- Claude Code: Anthropic Messages


def check_anthropic_stream(events: list[tuple[str | None, dict[str, Any]]]) -> None:
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop", names
    for name, data in events:
        assert data["type"] == name, (name, data)
    usage = events[0][1]["message"]["usage"]
    assert isinstance(usage["input_tokens"], int) and usage["input_tokens"] > 1000, usage
    open_blocks: set[int] = set()
    seen: list[int] = []
    for name, data in events:
        if name == "content_block_start":
            assert data["index"] not in open_blocks and data["index"] not in seen, data
            open_blocks.add(data["index"])
            seen.append(data["index"])
        elif name == "content_block_delta":
            assert data["index"] in open_blocks, data
        elif name == "content_block_stop":
            assert data["index"] in open_blocks, data
            open_blocks.remove(data["index"])
    assert not open_blocks and seen == list(range(len(seen))), (seen, open_blocks)
    deltas = [data for name, data in events if name == "message_delta"]
    assert len(deltas) == 1, names
    assert deltas[0]["delta"]["stop_reason"] in ANTHROPIC_STOPS, deltas
    assert isinstance(deltas[0]["usage"]["output_tokens"], int)


def test_claude_code_first_request_streams_messages(agent_server: ShimmyProcess) -> None:
    body = {**CLAUDE["body"], "max_tokens": CAP}  # the one change: 32000 tokens capped
    check_anthropic_stream(list(replay(agent_server.port, CLAUDE, body)))


def test_claude_code_first_request_is_accepted_as_captured(agent_server: ShimmyProcess) -> None:
    """Uncapped, exactly as sent: the stream opens with message_start (then we hang up)."""
    events = replay(agent_server.port, CLAUDE, CLAUDE["body"])
    name, data = next(events)
    events.close()
    assert name == "message_start", (name, data)
    usage = data["message"]["usage"]
    # input_tokens counts what was not read from the cache, as Anthropic's usage does
    assert usage["input_tokens"] + usage["cache_read_input_tokens"] > 1000, usage


def test_claude_code_checks_the_server_with_head(agent_server: ShimmyProcess) -> None:
    for other in CLAUDE["other_requests"]:
        if other["method"] == "HEAD":
            status, _, _ = request(agent_server.port, "HEAD", other["path"])
            assert status < 500, (other, status)


# ---- Codex CLI: OpenAI Responses


def check_responses_stream(events: list[tuple[str | None, dict[str, Any]]]) -> None:
    types = [data["type"] for _, data in events]
    # always response.completed (Codex ends a turn on no other event); a capped answer's
    # response says status 'incomplete' (reason max_output_tokens)
    assert types[0] == "response.created", types
    assert types[-1] == "response.completed", types
    for name, data in events:
        assert name in (None, data["type"]), (name, data)
    numbers = [data["sequence_number"] for _, data in events]
    assert all(b > a for a, b in zip(numbers, numbers[1:], strict=False)), numbers
    added = [data["output_index"] for _, data in events
             if data["type"] == "response.output_item.added"]
    done = [data["output_index"] for _, data in events
            if data["type"] == "response.output_item.done"]
    assert added == done, (added, done)
    final = events[-1][1]["response"]
    assert final["status"] in ("completed", "incomplete"), final
    if final["status"] == "incomplete":
        assert final["incomplete_details"] == {"reason": "max_output_tokens"}, final
    assert final["usage"]["input_tokens"] > 1000, final["usage"]
    assert len(final["output"]) == len(done), final["output"]


def test_codex_first_request_streams_a_response(agent_server: ShimmyProcess) -> None:
    body = {**CODEX["body"], "max_output_tokens": CAP}  # the one change: a length cap
    check_responses_stream(list(replay(agent_server.port, CODEX, body)))


def test_codex_first_request_is_accepted_as_captured(agent_server: ShimmyProcess) -> None:
    """Uncapped, exactly as sent: the stream opens with response.created."""
    events = replay(agent_server.port, CODEX, CODEX["body"])
    _, data = next(events)
    events.close()
    assert data["type"] == "response.created", data
    assert data["sequence_number"] == 0 and data["response"]["status"] == "in_progress"
