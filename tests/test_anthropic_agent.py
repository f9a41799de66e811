"""An agent loop through the real ``anthropic`` SDK: a forced tool call, its result sent
back, the final answer; streamed (the SDK's accumulator and raw events) and whole.

The embedded model is a tiny base model: these tests assert structure, never wording.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import anthropic
import pytest
from clients import busy_slots, connect
from conftest import wait_until
from test_api_anthropic import MODEL, sse_events

WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                     "required": ["city"]},
}
TIME = {"name": "get_time", "description": "The time now.",
        "input_schema": {"type": "object", "properties": {}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
FORCED = {"type": "tool", "name": "get_weather"}


@pytest.fixture
def client(port: int) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key="x",
                               max_retries=0, timeout=120)


def ask(client: anthropic.Anthropic, messages: list[dict[str, Any]],
        choice: dict[str, Any] | None, stream: bool, **extra: Any) -> Any:
    fields: dict[str, Any] = {"model": MODEL, "max_tokens": 60, "messages": messages,
                              "tools": [WEATHER, TIME], "extra_body": {"temperature": 0},
                              **extra}
    if choice is not None:
        fields["tool_choice"] = choice
    if not stream:
        return client.messages.create(**fields)
    with client.messages.stream(**fields) as events:
        for _ in events:
            pass
        return events.get_final_message()


def assert_tool_call(message: Any, name: str | None = "get_weather") -> Any:
    assert message.stop_reason == "tool_use"
    calls = [block for block in message.content if block.type == "tool_use"]
    assert calls and all(block.type in ("text", "tool_use") for block in message.content)
    call = calls[0]
    assert call.id.startswith("toolu_") and call.name == (name or call.name)
    assert isinstance(call.input, dict)
    return call


def dumped(message: Any) -> list[dict[str, Any]]:
    """The answer's blocks as a client sends them back."""
    return [block.model_dump(exclude_none=True) for block in message.content]


def assert_answer(message: Any) -> None:
    assert message.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert message.content and all(b.type in ("text", "tool_use") for b in message.content)
    assert message.usage.input_tokens + message.usage.cache_read_input_tokens > 0
    assert message.usage.output_tokens >= 1


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_agent_loop(client: anthropic.Anthropic, stream: bool) -> None:
    first = ask(client, ASK, FORCED, stream)
    call = assert_tool_call(first)
    assert set(call.input) >= {"city"} and isinstance(call.input["city"], str)
    history = [*ASK, {"role": "assistant", "content": dumped(first)},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                             "content": "Sunny, 21 C"}]}]
    final = ask(client, history, {"type": "auto"}, stream)
    assert_answer(final)
    plain = ask(client, history, {"type": "none"}, stream)
    assert plain.stop_reason in ("end_turn", "max_tokens")
    assert [block.type for block in plain.content] == ["text"]


def test_any_tool_and_error_results(client: anthropic.Anthropic) -> None:
    first = ask(client, ASK, {"type": "any", "disable_parallel_tool_use": True}, False)
    call = assert_tool_call(first, None)
    assert call.name in ("get_weather", "get_time")
    history = [*ASK, {"role": "assistant", "content": dumped(first)},
               {"role": "user", "content": [
                   {"type": "tool_result", "tool_use_id": call.id, "is_error": True,
                    "content": [{"type": "text", "text": "service down"}]},
                   {"type": "text", "text": "Try again later.",
                    "cache_control": {"type": "ephemeral"}}]}]
    assert_answer(ask(client, history, None, False))


def test_streamed_tool_call_events(port: int) -> None:
    body = {"model": MODEL, "max_tokens": 60, "messages": ASK, "tools": [WEATHER],
            "tool_choice": FORCED, "temperature": 0}
    events = list(sse_events(port, body))
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    start = dict(events)["message_start"]["message"]
    assert start["usage"]["input_tokens"] + start["usage"]["cache_read_input_tokens"] > 0
    assert start["usage"]["output_tokens"] == 0 and start["content"] == []
    opened = [(data["index"], data["content_block"]) for name, data in events
              if name == "content_block_start"]
    tools = [(index, block) for index, block in opened if block["type"] == "tool_use"]
    assert tools, names
    index, block = tools[0]
    assert block["input"] == {} and block["id"].startswith("toolu_")
    assert block["name"] == "get_weather"
    pieces = [data["delta"] for name, data in events
              if name == "content_block_delta" and data["index"] == index]
    assert pieces and all(piece["type"] == "input_json_delta" for piece in pieces)
    assert isinstance(json.loads("".join(p["partial_json"] for p in pieces)), dict)
    stops = [data["index"] for name, data in events if name == "content_block_stop"]
    assert stops == [i for i, _ in opened]  # each block closes, in order, before the next
    end = dict(events)["message_delta"]
    assert end["delta"]["stop_reason"] == "tool_use" and end["usage"]["output_tokens"] > 0


def test_stream_with_raw_events_through_the_sdk(client: anthropic.Anthropic) -> None:
    stream = client.messages.create(model=MODEL, max_tokens=40, messages=ASK,
                                    tools=[WEATHER], tool_choice=FORCED, stream=True,
                                    extra_body={"temperature": 0})
    types = [event.type for event in stream]
    assert types[0] == "message_start" and types[-1] == "message_stop"
    assert "content_block_start" in types and "message_delta" in types


def test_thinking_disabled_and_adaptive_are_accepted(client: anthropic.Anthropic) -> None:
    for thinking in ({"type": "disabled"}, {"type": "adaptive"},
                     {"type": "enabled", "budget_tokens": 1024}):
        message = client.messages.create(model=MODEL, max_tokens=4, messages=ASK,
                                         extra_body={"thinking": thinking})
        assert message.content and message.content[0].type in ("text", "thinking")


def test_max_tokens_32000_is_clamped(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model=MODEL, max_tokens=32000, messages=[
        {"role": "user", "content": "Say hi."}], stop_sequences=["\n"],
        extra_body={"temperature": 0})
    assert message.stop_reason in ("end_turn", "stop_sequence", "max_tokens")


def test_disconnect_during_a_tool_call_frees_the_slot(port: int) -> None:
    assert wait_until(lambda: busy_slots(port) == 0)
    sock = connect(port, timeout=60)
    body = json.dumps({"model": MODEL, "max_tokens": 4000, "messages": ASK, "stream": True,
                       "tools": [WEATHER], "tool_choice": FORCED}).encode()
    sock.sendall(b"POST /v1/messages?beta=true HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(body), body))
    received = b""
    while b"event: message_start" not in received:  # a stream starts before any token
        received += sock.recv(65536)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
    assert wait_until(lambda: busy_slots(port) == 0, timeout=5.0)
