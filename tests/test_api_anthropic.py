"""Anthropic's Messages API at /v1/messages, driven by the real ``anthropic`` client."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from clients import busy_slots, connect, request, request_json
from conftest import wait_until

MODEL = "gemma-3-270m-q4_k_m"
GREEDY = {"temperature": 0}
ASK = [{"role": "user", "content": "Name three colours."}]
# a prefilled count: the base model keeps counting, so answers are long and predictable
COUNT = [{"role": "user", "content": "Count from 1 to 500."},
         {"role": "assistant", "content": "1, 2, 3,"}]
STREAM_EVENTS = ["message_start", "ping", "content_block_start", "content_block_delta",
                 "content_block_stop", "message_delta", "message_stop"]


@pytest.fixture
def client(port: int) -> anthropic.Anthropic:
    # this anthropic release has no sampling keywords: temperature goes in extra_body
    return anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key="x",
                               max_retries=0, timeout=120)


def sse_events(port: int, body: dict[str, Any], path: str = "/v1/messages",
               headers: dict[str, str] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(event name, data)`` of a raw streamed /v1/messages response."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", path, body=json.dumps({**body, "stream": True}),
                     headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        assert response.status == 200, response.read()
        assert response.getheader("content-type", "").startswith("text/event-stream")
        name = None
        for line in response:
            text = line.decode().rstrip("\r\n")
            if text.startswith("event: "):
                name = text[len("event: "):]
            elif text.startswith("data: "):
                assert name is not None, text
                yield name, json.loads(text[len("data: "):])
                name = None
    finally:
        conn.close()


def openai_prompt_tokens(port: int, messages: list[dict[str, Any]]) -> int:
    status, body = request_json(port, "POST", "/v1/chat/completions",
                                {"model": MODEL, "messages": messages, "max_tokens": 1})
    assert status == 200, body
    return body["usage"]["prompt_tokens"]


def test_message_shape_and_usage(port: int, client: anthropic.Anthropic) -> None:
    status, _, raw = request(port, "POST", "/v1/messages",
                             {"model": MODEL, "max_tokens": 8, "messages": ASK, **GREEDY})
    assert status == 200, raw
    body = json.loads(raw)
    assert set(body) == {"id", "type", "role", "model", "content", "stop_reason",
                         "stop_sequence", "usage"}
    assert body["id"].startswith("msg_") and body["type"] == "message"
    assert body["role"] == "assistant" and body["model"] == MODEL
    message = client.messages.create(model=MODEL, max_tokens=8, messages=ASK,
                                     extra_body=GREEDY)
    (block,) = message.content
    assert block.type == "text" and block.text == body["content"][0]["text"]
    assert "<end_of_turn>" not in block.text
    usage = message.usage
    assert usage.input_tokens + usage.cache_read_input_tokens == openai_prompt_tokens(port, ASK)
    assert message.stop_reason in ("end_turn", "max_tokens") and message.stop_sequence is None
    if message.stop_reason == "max_tokens":
        assert usage.output_tokens == 8
    else:
        assert 1 <= usage.output_tokens < 8


def test_max_tokens_stop_reason(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model=MODEL, max_tokens=5, messages=COUNT,
                                     extra_body=GREEDY)
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 5
    assert message.content[0].text.startswith(" 4,")  # the prefill is continued, not repeated


def test_cached_prefix_counts_as_cache_read(port: int, client: anthropic.Anthropic) -> None:
    system = "You are a helpful assistant. " * 60  # > 256 tokens
    messages = [{"role": "user", "content": "Hi"}]
    client.messages.create(model=MODEL, max_tokens=2, system=system, messages=messages)
    again = client.messages.create(model=MODEL, max_tokens=2, system=system,
                                   messages=messages + [{"role": "assistant", "content": "Hello"},
                                                        {"role": "user", "content": "Then?"}])
    usage = again.usage
    assert usage.cache_read_input_tokens >= 256 and usage.input_tokens > 0
    whole = [{"role": "system", "content": system}, *messages,
             {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Then?"}]
    assert usage.input_tokens + usage.cache_read_input_tokens == openai_prompt_tokens(port, whole)


def test_system_as_string_and_as_blocks(port: int, client: anthropic.Anthropic) -> None:
    fields = {"model": MODEL, "max_tokens": 6, "messages": ASK, "extra_body": GREEDY}
    plain = client.messages.create(system="Answer in French.", **fields)
    blocks = client.messages.create(
        system=[{"type": "text", "text": "Answer"}, {"type": "text", "text": "in French."}],
        **fields)
    joined = client.messages.create(system="Answer\nin French.", **fields)
    assert blocks.content[0].text == joined.content[0].text
    with_system = [{"role": "system", "content": "Answer in French."}, *ASK]
    assert plain.usage.input_tokens + plain.usage.cache_read_input_tokens == \
        openai_prompt_tokens(port, with_system)
    assert plain.usage.input_tokens + plain.usage.cache_read_input_tokens > \
        openai_prompt_tokens(port, ASK)


def test_stop_sequences(client: anthropic.Anthropic) -> None:
    fields = {"model": MODEL, "max_tokens": 20, "messages": COUNT, "extra_body": GREEDY}
    first = client.messages.create(**fields).content[0].text
    stop = first[len(first) // 2:len(first) // 2 + 3]
    message = client.messages.create(stop_sequences=["never there", stop], **fields)
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == stop
    assert message.content[0].text == first[:first.index(stop)]


def test_stream_with_the_client(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model=MODEL, max_tokens=12, messages=COUNT, system="Count.",
                                extra_body=GREEDY) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1 and "".join(pieces) == final.content[0].text
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 12
    reply = client.messages.create(model=MODEL, max_tokens=12, messages=COUNT, system="Count.",
                                   extra_body=GREEDY)
    assert reply.content[0].text == final.content[0].text
    assert reply.usage.input_tokens + reply.usage.cache_read_input_tokens == \
        final.usage.input_tokens + final.usage.cache_read_input_tokens


def test_stream_event_sequence(port: int, client: anthropic.Anthropic) -> None:
    fields = {"model": MODEL, "max_tokens": 10, "messages": COUNT, **GREEDY}
    events = list(sse_events(port, fields))
    names = [name for name, _ in events]
    deltas = names.count("content_block_delta")
    assert deltas >= 1
    assert names == STREAM_EVENTS[:3] + ["content_block_delta"] * deltas + STREAM_EVENTS[4:]
    assert all(data["type"] == name for name, data in events)
    data = dict(events)
    start = data["message_start"]["message"]
    assert start["id"].startswith("msg_") and start["content"] == []
    assert start["stop_reason"] is None and start["usage"]["output_tokens"] == 0
    assert start["usage"]["input_tokens"] > 0
    assert data["content_block_start"] == {"type": "content_block_start", "index": 0,
                                           "content_block": {"type": "text", "text": ""}}
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    end = data["message_delta"]
    assert end["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert end["usage"]["output_tokens"] == 10
    reply = client.messages.create(model=MODEL, max_tokens=10, messages=COUNT,
                                   extra_body=GREEDY)
    assert text == reply.content[0].text


def test_stream_stop_sequence(port: int) -> None:
    fields = {"model": MODEL, "max_tokens": 20, "messages": COUNT, "stop_sequences": [" 9,"],
              **GREEDY}
    events = list(sse_events(port, fields))
    end = dict(events)["message_delta"]
    assert end["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": " 9,"}
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == " 4, 5, 6, 7, 8,"


def assert_error(error: anthropic.APIStatusError, kind: str, *words: str) -> None:
    assert set(error.body) == {"type", "error"} and error.body["type"] == "error"
    assert set(error.body["error"]) == {"type", "message"}
    assert error.body["error"]["type"] == kind
    for word in words:
        assert word in error.body["error"]["message"]


def test_unknown_model_is_not_found(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="gpt-nope", max_tokens=5, messages=ASK)
    assert_error(caught.value, "not_found_error", "gpt-nope")


def test_claude_names_go_to_the_default_model(client: anthropic.Anthropic) -> None:
    for name in ("claude-sonnet-4-5-20250929", "claude-3-5-haiku-20241022"):
        message = client.messages.create(model=name, max_tokens=2, messages=ASK)
        assert message.model == MODEL and message.usage.output_tokens >= 1


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"max_tokens": None}, ["max_tokens"]),
        ({"max_tokens": 0}, ["max_tokens"]),
        ({"messages": [{"role": "tool", "content": "x"}]}, ["role"]),
        ({"messages": []}, ["messages"]),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
            "type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]},
         ["Unsupported content block 'image'", "messages[0].content[0]"]),
        ({"messages": [{"role": "user", "content": [{"type": "tool_result",
                                                     "tool_use_id": "t", "content": "x"}]}]},
         ["tool_use_id 't'"]),
        ({"system": [{"type": "document", "source": {}}]}, ["'document'", "system[0]"]),
        ({"temperature": 1.5}, ["temperature"]),
        ({"tools": [{"name": "f", "input_schema": "object"}]}, ["tools[0].input_schema"]),
        ({"tools": [{"name": "f", "input_schema": {"type": "object"}}],
          "tool_choice": {"type": "tool", "name": "g"}}, ["'g'"]),
        ({"tool_choice": {"type": "any"}}, ["tools"]),
        ({"thinking": {"type": "sometimes"}}, ["thinking.type"]),
    ],
)
def test_bad_requests(client: anthropic.Anthropic, fields: dict, words: list[str]) -> None:
    body = {"model": MODEL, "max_tokens": 5, "messages": ASK, **fields}
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.post("/v1/messages", body={k: v for k, v in body.items() if v is not None},
                    cast_to=object)
    assert caught.value.status_code == 400
    assert_error(caught.value, "invalid_request_error", *words)


def test_route_errors_use_the_anthropic_shape_only_under_messages(port: int) -> None:
    status, body = request_json(port, "GET", "/v1/messages")
    assert status == 405 and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    status, body = request_json(port, "POST", "/v1/messages/nope", {})
    assert status == 404 and body["error"]["type"] == "not_found_error"
    status, body = request_json(port, "POST", "/v1/chat/nope", {})
    assert status == 404 and "type" not in body and "code" in body["error"]  # OpenAI's shape


def test_disconnect_mid_stream_frees_the_slot(port: int) -> None:
    assert wait_until(lambda: busy_slots(port) == 0)
    sock = connect(port, timeout=60)
    body = json.dumps({"model": MODEL, "max_tokens": 4000, "messages": COUNT, "stream": True,
                       "ignore_eos": True}).encode()
    sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    received = b""
    while received.count(b"event: content_block_delta") < 3:
        received += sock.recv(65536)
    assert busy_slots(port) == 1
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
    assert wait_until(lambda: busy_slots(port) == 0, timeout=2.0)
