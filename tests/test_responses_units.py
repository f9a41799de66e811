"""The Responses translator without a server: input items to chat messages, chat events
to stream events (checked against the ``openai`` package's own types), keep-alives."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from shimmy.api.openai.responses import input_messages, responses_request
from shimmy.api.openai.responses_stream import (
    OutputWriter,
    ResponseJob,
    sse_event,
)
from shimmy.api.streams import with_pings
from shimmy.chat.events import (
    Finish,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from shimmy.errors import ApiError, generation_failed

STREAM_EVENT = TypeAdapter(ResponseStreamEvent)


def fake_job(completion_tokens: int = 9) -> ResponseJob:
    generation = SimpleNamespace(prompt_tokens=20, completion_tokens=completion_tokens,
                                 cached_tokens=4)
    model = SimpleNamespace(name="tiny", tokenize=lambda text: text.split())
    _, echo = responses_request({"input": "Hi"})
    return ResponseJob(SimpleNamespace(model=model, generation=generation), echo)


def run_writer(events: list[Any]) -> list[dict[str, Any]]:
    writer = OutputWriter(fake_job())
    produced = writer.start()
    for event in events:
        produced += writer.feed(event)
    return produced


def validated(produced: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each event parses as the SDK's event type (strict pydantic validation), and the
    sequence numbers count up from 0."""
    for event in produced:
        STREAM_EVENT.validate_python(event)
    assert [e["sequence_number"] for e in produced] == list(range(len(produced)))
    return produced


FINISH = Finish("stop", None, Usage(20, 9, 4))


def test_thinking_text_and_a_call_make_three_items_in_order() -> None:
    produced = validated(run_writer([
        ThinkingDelta("Let me"), ThinkingDelta(" think."), TextDelta("\n\n"),
        TextDelta("Checking."), ToolCallStart(0, "call_1", "get_weather"),
        ToolCallDelta(0, '{"city": '), ToolCallDelta(0, '"Oslo"}'),
        ToolCallEnd(0, '{"city": "Oslo"}'), Finish("tool_calls", None, Usage(20, 9, 4)),
    ]))
    kinds = [e["type"] for e in produced]
    assert kinds == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.reasoning_text.delta", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]
    response = Response.model_validate(produced[-1]["response"])
    reasoning, message, call = response.output
    assert reasoning.content[0].text == "Let me think." and reasoning.summary == []
    assert message.content[0].text == "\n\nChecking." and message.status == "completed"
    assert call.call_id == "call_1" and call.arguments == '{"city": "Oslo"}'
    assert [e["output_index"] for e in produced if "output_index" in e] == \
        [0] * 7 + [1] * 7 + [2] * 5
    assert response.usage.output_tokens_details.reasoning_tokens == 3  # fake: words
    assert response.usage.input_tokens_details.cached_tokens == 4


def test_whitespace_before_a_call_starts_no_message() -> None:
    produced = validated(run_writer([
        TextDelta("\n"), ToolCallStart(0, "call_1", "f"), ToolCallEnd(0, "{}"),
        ToolCallStart(1, "call_2", "g"), ToolCallEnd(1, '{"a": 1}'),
        Finish("tool_calls", None, Usage(20, 9, 4)),
    ]))
    output = produced[-1]["response"]["output"]
    assert [(i["type"], i["name"], i["arguments"]) for i in output] == \
        [("function_call", "f", "{}"), ("function_call", "g", '{"a": 1}')]


def test_an_empty_answer_is_one_empty_message() -> None:
    produced = validated(run_writer([FINISH]))
    (message,) = produced[-1]["response"]["output"]
    assert message["content"][0]["text"] == "" and message["type"] == "message"


def test_the_length_limit_makes_an_incomplete_response() -> None:
    produced = validated(run_writer([TextDelta("one two"), Finish("length", None,
                                                                   Usage(20, 2, 0))]))
    final = produced[-1]
    # response.completed, not response.incomplete: Codex ends a turn on no other event
    assert final["type"] == "response.completed"
    assert final["response"]["status"] == "incomplete"
    assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["response"]["output"][0]["status"] == "incomplete"


def test_a_failed_generation_is_response_failed() -> None:
    writer = OutputWriter(fake_job())
    produced = writer.start() + writer.feed(TextDelta("a")) + \
        writer.fail(generation_failed("decode returned 1"))
    validated(produced)
    failed = produced[-1]
    assert failed["type"] == "response.failed"
    assert failed["response"]["error"]["code"] == "server_error"
    assert "decode returned 1" in failed["response"]["error"]["message"]
    context = writer.fail(ApiError(400, "context_length_exceeded", "too long"))[0]
    assert context["response"]["error"]["code"] == "context_length_exceeded"


def test_sse_framing_names_the_event() -> None:
    raw = sse_event({"type": "response.in_progress", "sequence_number": 1, "x": "é"})
    name, data = raw.decode().rstrip("\n").split("\n")
    assert name == "event: response.in_progress" and json.loads(data[6:])["x"] == "é"


def test_keepalives_come_only_while_nothing_has_been_generated() -> None:
    generation = SimpleNamespace(first_piece_at=None)

    async def slow() -> Any:
        yield b"created"
        await asyncio.sleep(0.25)
        generation.first_piece_at = 1.0
        yield b"token"
        await asyncio.sleep(0.25)
        yield b"done"

    async def collect() -> list[bytes]:
        return [chunk async for chunk in
                with_pings(slow(), generation, lambda: b"ping", interval=0.04)]

    chunks = asyncio.run(collect())
    assert chunks[0] == b"created" and chunks[-2:] == [b"token", b"done"]
    assert set(chunks[1:-2]) == {b"ping"} and len(chunks[1:-2]) >= 3


# --- input items ---------------------------------------------------------------------

def test_items_become_chat_messages() -> None:
    items = [
        {"type": "message", "role": "developer", "content": [{"type": "input_text",
                                                              "text": "Be terse."}]},
        {"role": "user", "content": "Weather?"},
        {"type": "reasoning", "id": "rs_1", "summary": [],
         "content": [{"type": "reasoning_text", "text": "Need a tool."}]},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]},
        {"type": "function_call", "call_id": "c1", "name": "w", "arguments": '{"a":1}'},
        {"type": "function_call", "call_id": "c2", "name": "w", "arguments": ""},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "c2",
         "output": [{"type": "input_text", "text": "rain"}]},
        {"type": "message", "role": "developer", "content": "Later note."},
    ]
    messages = input_messages(items, "Instructions.")
    assert messages == [
        {"role": "system", "content": "Instructions.\n\nBe terse."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Checking.", "reasoning_content": "Need a tool.",
         "tool_calls": [
             {"id": "c1", "type": "function", "function": {"name": "w",
                                                           "arguments": '{"a":1}'}},
             {"id": "c2", "type": "function", "function": {"name": "w",
                                                           "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "rain"},
        {"role": "developer", "content": "Later note."},
    ]


def test_request_fields_map_to_the_chat_request() -> None:
    chat, echo = responses_request({
        "input": "Hi", "max_output_tokens": 50, "temperature": 0.2, "top_p": 0.5,
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}},
                  {"type": "web_search"}, {"type": "custom", "name": "apply_patch"}],
        "tool_choice": {"type": "function", "name": "f"}, "parallel_tool_calls": False,
        "text": {"format": {"type": "json_schema", "name": "x",
                            "schema": {"type": "object"}}},
        "reasoning": {"effort": "minimal", "summary": "auto"}, "store": True,
        "include": ["message.output_text.logprobs"], "top_logprobs": 2,
        "prompt_cache_key": "k", "client_metadata": {"a": "b"}, "service_tier": "auto",
        "truncation": "auto", "stream_options": {"include_obfuscation": False},
    })
    assert chat.tools == [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object"}}}]
    assert chat.tool_choice == "f" and chat.parallel_tool_calls is False
    assert chat.max_tokens == 50 and chat.sampling.temperature == 0.2
    assert chat.response_format == {"type": "json_schema", "schema": {"type": "object"}}
    assert chat.reasoning_effort == "low" and chat.logprobs == 2 and chat.session == "k"
    assert echo["tool_choice"] == {"type": "function", "name": "f"}
    assert [t["name"] for t in echo["tools"]] == ["f"] and echo["store"] is False
    none, _ = responses_request({"input": "Hi", "reasoning": {"effort": "none"}})
    assert none.thinking is False


def test_allowed_tools_narrow_the_offer() -> None:
    tools = [{"type": "function", "name": n} for n in ("a", "b", "c")]
    chat, _ = responses_request({"input": "Hi", "tools": tools, "tool_choice": {
        "type": "allowed_tools", "mode": "required",
        "tools": [{"type": "function", "name": "b"}]}})
    assert chat.tool_choice == "required"
    assert [t["function"]["name"] for t in chat.tools] == ["b"]


@pytest.mark.parametrize("item", [
    {"type": "function_call_output", "call_id": "x", "output": "y"},
    {"type": "function_call", "call_id": "x", "name": "f"},
    {"type": "message", "role": "user", "content": [{"type": "input_file", "file_id": "f"}]},
    {"type": "message", "role": "user", "content": [{"type": "input_text"}]},
    {"type": "message", "role": "user"},
    {"type": "web_search_call", "id": "ws_1"},
])
def test_malformed_items_are_invalid_requests(item: dict[str, Any]) -> None:
    with pytest.raises(ApiError) as caught:
        input_messages([item], None)
    assert caught.value.status == 400 and caught.value.param == "input"
