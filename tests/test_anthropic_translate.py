"""Anthropic Messages bodies into the chat layer's request, and its events back out as
content blocks: no model needed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shimmy.api.anthropic.errors import anthropic_error_body
from shimmy.api.anthropic.stream import ContentBlocks, stop_reason, tool_input, tool_use_id
from shimmy.api.anthropic.translate import chat_request
from shimmy.chat.events import (
    Finish,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from shimmy.chat.run import context_exceeded
from shimmy.errors import ApiError

WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                            "required": ["city"]}}
CALL = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}


def translate(headers: dict[str, str] | None = None, **body: Any) -> Any:
    return chat_request({"max_tokens": 10, **body}, headers or {})


def refused(**body: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        translate(**body)
    assert caught.value.status == 400
    return caught.value


def test_text_turns_system_blocks_and_ignored_fields() -> None:
    request = translate(
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Be kind."}],
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}],
        metadata={"user_id": "u"}, service_tier="auto", context_management={"edits": []},
        container="c", mcp_servers=[], output_config={"effort": "high"},
        stream=True, temperature=0.5, top_k=5, stop_sequences=["END"])
    assert request.messages == [{"role": "system", "content": "Be brief.\nBe kind."},
                                {"role": "user", "content": "Hi"}]
    assert request.max_tokens == 10 and request.stop == ["END"]
    assert request.sampling.temperature == 0.5 and request.sampling.top_k == 5
    assert request.reasoning_effort == "high" and request.tools is None


def test_same_role_turns_merge_and_last_assistant_is_prefill() -> None:
    request = translate(messages=[
        {"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "text",
                                                                       "text": "b"}]},
        {"role": "assistant", "content": "1, 2,"}])
    assert request.messages == [{"role": "user", "content": "a\nb"}]
    assert request.prefill == "1, 2,"


def test_tools_and_tool_choice() -> None:
    request = translate(messages=[{"role": "user", "content": "Weather?"}], tools=[
        {**WEATHER, "cache_control": {"type": "ephemeral"}},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True})
    assert request.tools == [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city",
        "parameters": WEATHER["input_schema"]}}]
    assert request.tool_choice == "get_weather" and request.parallel_tool_calls is False
    for choice, expected in (({"type": "any"}, "required"), ({"type": "auto"}, "auto"),
                             ({"type": "none"}, "none"), (None, "auto")):
        request = translate(messages=[{"role": "user", "content": "x"}], tools=[WEATHER],
                            tool_choice=choice)
        assert request.tool_choice == expected and request.parallel_tool_calls is True


def test_tool_use_and_results_become_calls_and_tool_messages() -> None:
    second = {**CALL, "id": "toolu_2", "input": {"city": "Oslo"}}
    request = translate(tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Two calls.", "signature": "sig"},
            {"type": "redacted_thinking", "data": "xxx"},
            {"type": "text", "text": "Checking."}, CALL, second]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_2",
             "content": [{"type": "text", "text": "snow"}]},
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sun",
             "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Thanks"}]},
        {"role": "assistant", "content": [{**CALL, "id": "toolu_3", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_3",
                                      "is_error": True, "content": "no city"}]}])
    user, assistant, paris, oslo, thanks, again, failed = request.messages
    assert user == {"role": "user", "content": "Weather in Paris and Oslo?"}
    assert assistant["content"] == "Checking." and assistant["reasoning_content"] == "Two calls."
    assert [(c["id"], json.loads(c["function"]["arguments"])) for c in
            assistant["tool_calls"]] == [("toolu_1", {"city": "Paris"}),
                                         ("toolu_2", {"city": "Oslo"})]
    assert paris == {"role": "tool", "tool_call_id": "toolu_1", "name": "get_weather",
                     "content": "sun"}
    assert oslo["tool_call_id"] == "toolu_2" and oslo["content"] == "snow"
    assert thanks == {"role": "user", "content": "Thanks"}
    assert again["tool_calls"][0]["function"]["arguments"] == "{}"
    assert failed["content"] == "Error: no city"
    assert request.prefill == ""


def test_system_turns_among_the_messages() -> None:
    request = translate(system="Top.", messages=[
        {"role": "system", "content": "First."},
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": [{"type": "text", "text": "Agents: a, b."}]}])
    assert request.messages == [
        {"role": "system", "content": "Top.\nFirst."},
        {"role": "user", "content": "Hi\n<system-reminder>\nAgents: a, b.\n</system-reminder>"}]


def test_tool_results_go_right_after_their_calls() -> None:
    request = translate(tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather?"}, {"role": "assistant", "content": [CALL]},
        {"role": "system", "content": "Be quick."},
        {"role": "user", "content": [{"type": "text", "text": "Here:"},
                                     {"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": "sun"}]}])
    roles = [(m["role"], m["content"]) for m in request.messages]
    assert roles == [("user", "Weather?"), ("assistant", ""), ("tool", "sun"),
                     ("user", "<system-reminder>\nBe quick.\n</system-reminder>\nHere:")]


def test_thinking_field() -> None:
    ask = [{"role": "user", "content": "x"}]
    assert translate(messages=ask, thinking={"type": "enabled", "budget_tokens": 2048}
                     ).thinking is True
    assert translate(messages=ask, thinking={"type": "disabled"}).thinking is False
    assert translate(messages=ask, thinking={"type": "adaptive"}).thinking is None
    assert translate(messages=ask).thinking is None
    assert "thinking.type" in refused(messages=ask, thinking={"type": "maybe"}).details


def test_session_header() -> None:
    request = translate({"x-claude-code-session-id": "abc"},
                        messages=[{"role": "user", "content": "x"}])
    assert request.session == "abc"


@pytest.mark.parametrize(("block", "kind"), [
    ({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}},
     "image"),
    ({"type": "document", "source": {"type": "text", "data": "x"}}, "document"),
    ({"type": "search_result", "source": "s", "title": "t", "content": []}, "search_result"),
])
def test_media_blocks_are_refused_by_name(block: dict[str, Any], kind: str) -> None:
    error = refused(messages=[{"role": "user", "content": [block]}])
    assert f"'{kind}'" in error.message and "messages[0].content[0]" in error.details
    nested = refused(tools=[WEATHER], messages=[
        {"role": "user", "content": "x"}, {"role": "assistant", "content": [CALL]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": [block]}]}])
    assert f"'{kind}'" in nested.message


@pytest.mark.parametrize(("body", "words"), [
    ({"tools": [{"name": "f", "input_schema": "object"}]}, ["input_schema"]),
    ({"tools": [{"name": "f"}]}, ["input_schema"]),
    ({"tools": [{"input_schema": {"type": "object"}}]}, ["name"]),
    ({"tools": {"name": "f"}}, ["array"]),
    ({"tool_choice": {"type": "function"}}, ["tool_choice"]),
    ({"tool_choice": {"type": "tool"}}, ["tool_choice.name"]),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result",
                                                "tool_use_id": "toolu_x", "content": "1"}]}]},
     ["toolu_x"]),
    ({"messages": [{"role": "user", "content": [{"text": "no type"}]}]}, ["type"]),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, ["text"]),
    ({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t",
                                                     "name": "f", "input": "{}"}]}]},
     ["input"]),
    ({"messages": [{"role": "user", "content": 3}]}, ["content"]),
    ({"messages": [{"role": "tool", "content": "x"}]}, ["role"]),
    ({"messages": []}, ["messages"]),
    ({"system": [{"type": "image", "source": {}}]}, ["image"]),
    ({"temperature": 1.5}, ["temperature"]),
])
def test_bad_input_names_the_problem(body: dict[str, Any], words: list[str]) -> None:
    error = refused(**{"messages": [{"role": "user", "content": "x"}], **body})
    for word in words:
        assert word in f"{error.message}: {error.details}"


def test_max_tokens_is_required_except_for_counting() -> None:
    ask = {"messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(ApiError) as caught:
        chat_request(ask, {})
    assert "max_tokens" in caught.value.details
    assert chat_request(ask, {}, need_max_tokens=False).max_tokens is None
    assert chat_request({**ask, "max_tokens": 32000}, {}).max_tokens == 32000


def feed_all(events: list[Any]) -> tuple[ContentBlocks, list[tuple[str, dict[str, Any]]]]:
    blocks = ContentBlocks()
    streamed = [item for event in events for item in blocks.feed(event)]
    return blocks, streamed


FINISH = Finish("tool_calls", None, Usage(10, 5, 2))


def test_blocks_open_when_the_kind_changes() -> None:
    blocks, streamed = feed_all([
        ThinkingDelta("Let me "), ThinkingDelta("see."), TextDelta("Sure: "),
        ToolCallStart(0, "call_abc", "get_weather"), ToolCallDelta(0, '{"city": '),
        ToolCallDelta(0, '"Paris"'), ToolCallEnd(0, '{"city": "Paris"}'),
        ToolCallStart(1, "call_def", "get_weather"), ToolCallEnd(1, '{"city": "Oslo"}'),
        FINISH])
    assert blocks.content == [
        {"type": "thinking", "thinking": "Let me see.", "signature": ""},
        {"type": "text", "text": "Sure: "},
        {"type": "tool_use", "id": "toolu_abc", "name": "get_weather",
         "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_def", "name": "get_weather",
         "input": {"city": "Oslo"}}]
    kinds = [(name, data.get("index"), data.get("delta", {}).get("type")) for name, data
             in streamed]
    assert kinds == [
        ("content_block_start", 0, None), ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "thinking_delta"), ("content_block_delta", 0,
                                                       "signature_delta"),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, None), ("content_block_delta", 1, "text_delta"),
        ("content_block_stop", 1, None),
        ("content_block_start", 2, None), ("content_block_delta", 2, "input_json_delta"),
        ("content_block_delta", 2, "input_json_delta"), ("content_block_delta", 2,
                                                         "input_json_delta"),
        ("content_block_stop", 2, None),
        ("content_block_start", 3, None), ("content_block_delta", 3, "input_json_delta"),
        ("content_block_stop", 3, None)]
    starts = [data["content_block"] for name, data in streamed if name == "content_block_start"]
    assert starts[2] == {"type": "tool_use", "id": "toolu_abc", "name": "get_weather",
                         "input": {}}
    pieces = "".join(data["delta"]["partial_json"] for name, data in streamed
                     if data.get("index") == 2 and name == "content_block_delta")
    assert json.loads(pieces) == {"city": "Paris"}


def test_an_empty_answer_still_has_a_text_block() -> None:
    blocks, streamed = feed_all([TextDelta(""), Finish("stop", None, Usage(3, 1, 0))])
    assert blocks.content == [{"type": "text", "text": ""}]
    assert [name for name, _ in streamed] == ["content_block_start", "content_block_stop"]


def test_stop_reasons_and_tool_input() -> None:
    usage = Usage(1, 1, 0)
    assert stop_reason(Finish("stop", None, usage)) == ("end_turn", None)
    assert stop_reason(Finish("stop", "END", usage)) == ("stop_sequence", "END")
    assert stop_reason(Finish("length", None, usage)) == ("max_tokens", None)
    assert stop_reason(Finish("tool_calls", None, usage)) == ("tool_use", None)
    assert tool_input("") == {} and tool_input("[1]") == {} and tool_input("{") == {}
    assert tool_use_id("call_123") == "toolu_123"


def test_context_error_reads_as_anthropic_words_it() -> None:
    model = type("M", (), {"name": "m", "n_ctx": 512,
                           "model": type("E", (), {"n_ctx_train": 32768})()})()
    body = anthropic_error_body(context_exceeded(model, 900))
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    message = body["error"]["message"]
    assert message.startswith("prompt is too long: 900 tokens > 512 maximum")
    assert "--ctx" in message


# --- anything a client may send: a ChatRequest or a 400, never another exception ---

_leaves = (st.none() | st.booleans() | st.integers(-3, 70_000) | st.floats()
           | st.text(max_size=8) | st.sampled_from(["text", "tool_use", "tool_result", "image",
                                                     "thinking", "toolu_1", "enabled"]))
_json = st.recursive(_leaves, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
_block = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "tool_use", "tool_result", "thinking",
                              "redacted_thinking", "image", "document", "x"])},
    optional={"text": _json, "id": st.sampled_from(["toolu_1", "toolu_2"]) | _json,
              "tool_use_id": st.sampled_from(["toolu_1", "toolu_2"]) | _json,
              "name": st.sampled_from(["get_weather"]) | _json, "input": _json,
              "content": _json | st.text(max_size=5), "is_error": _json, "thinking": _json})
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool"])},
    optional={"content": st.text(max_size=8) | st.lists(_block, max_size=3) | _json})
_bodies = st.fixed_dictionaries({"messages": st.lists(_message, max_size=4) | _json}, optional={
    "max_tokens": _json | st.integers(1, 40_000), "system": _json, "tools": st.lists(
        st.fixed_dictionaries({"name": _json, "input_schema": _json},
                              optional={"type": _json}), max_size=2) | _json,
    "tool_choice": _json, "thinking": _json, "stop_sequences": _json, "temperature": _json,
    "output_config": _json})


@settings(deadline=None, derandomize=True, database=None, max_examples=400,
          suppress_health_check=list(HealthCheck))
@given(_bodies)
def test_any_body_is_a_request_or_a_400(body: dict[str, Any]) -> None:
    try:
        chat_request(body, {})
    except ApiError as exc:
        assert exc.status == 400
