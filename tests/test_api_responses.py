"""The OpenAI Responses API (/v1/responses), driven by the real ``openai`` client on the
real model: plain answers, streams, an agent loop with a forced tool call, formats,
token counts and errors. The model is a tiny base model: structure is asserted, never
wording."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
from clients import busy_slots, connect, request
from conftest import wait_until

MODEL = "gemma-3-270m-q4_k_m"
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather in a city",
           "strict": True,
           "parameters": {"type": "object", "properties": {
               "city": {"type": "string", "maxLength": 40},
               "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
               "required": ["city", "unit"], "additionalProperties": False}}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris, in celsius?"}]
CODEX_REQUEST = Path(__file__).parent / "data" / "agents" / "codex-first-request.json"


@pytest.fixture
def client(port: int) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-local",
                         max_retries=0, timeout=120)


def raw_events(port: int, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A streamed response's events as (``event:`` name, parsed ``data:``) pairs."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/v1/responses", body=json.dumps({**body, "stream": True}),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200, response.read()
        assert response.getheader("content-type", "").startswith("text/event-stream")
        text = response.read().decode()
    finally:
        conn.close()
    events = []
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines()
                     if not line.startswith(":"))
        if lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


def check_sequence(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The framing every stream keeps: names match types, numbers count up from 0, one
    terminal event last. Returns the data objects."""
    data = [payload for _, payload in events]
    assert all(name == payload["type"] for name, payload in events)
    assert [d["sequence_number"] for d in data] == list(range(len(data)))
    assert data[0]["type"] == "response.created"
    assert data[1]["type"] == "response.in_progress"
    assert data[-1]["type"] == "response.completed"
    return data


def test_plain_text_response(client: openai.OpenAI) -> None:
    reply = client.responses.create(model=MODEL, input="Name three colours.",
                                    instructions="Answer briefly.", max_output_tokens=12,
                                    temperature=0)
    assert reply.id.startswith("resp_") and reply.object == "response"
    assert reply.model == MODEL and reply.error is None
    assert reply.instructions == "Answer briefly." and reply.max_output_tokens == 12
    (message,) = reply.output
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    (part,) = message.content
    assert part.type == "output_text" and part.annotations == []
    assert reply.output_text == part.text and part.text
    usage = reply.usage
    assert usage.input_tokens > 5 and 1 <= usage.output_tokens <= 12
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens >= 0
    assert usage.output_tokens_details.reasoning_tokens == 0
    if reply.status == "incomplete":
        assert reply.incomplete_details.reason == "max_output_tokens"
        assert message.status == "incomplete" and usage.output_tokens == 12
    else:
        assert reply.status == "completed" and reply.incomplete_details is None
    assert "<end_of_turn>" not in part.text


def test_stream_follows_the_event_contract(port: int, client: openai.OpenAI) -> None:
    body = {"model": MODEL, "input": [{"role": "user", "content": "Name three colours."}],
            "max_output_tokens": 10, "temperature": 0}
    data = check_sequence(raw_events(port, body))
    kinds = [d["type"] for d in data]
    assert kinds[2:5] == ["response.output_item.added", "response.content_part.added",
                          "response.output_text.delta"]
    assert kinds[-5:-1] == ["response.output_text.delta", "response.output_text.done",
                            "response.content_part.done", "response.output_item.done"]
    created, final = data[0]["response"], data[-1]["response"]
    assert created["status"] == "in_progress" and created["output"] == []
    assert created["id"] == final["id"] and final["usage"]["output_tokens"] >= 1
    item = data[2]["item"]
    deltas = [d for d in data if d["type"] == "response.output_text.delta"]
    assert all(d["item_id"] == item["id"] and d["output_index"] == 0
               and d["content_index"] == 0 and d["logprobs"] == [] for d in deltas)
    streamed = "".join(d["delta"] for d in deltas)
    assert data[-4]["text"] == streamed == final["output"][0]["content"][0]["text"]
    assert data[-2]["item"] == final["output"][0]
    whole = client.responses.create(**body)
    assert whole.output_text == streamed
    assert whole.usage.input_tokens == final["usage"]["input_tokens"]


def test_sdk_typed_stream_ends_incomplete_at_the_limit(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model=MODEL, input="Count: one, two,",
                                          max_output_tokens=8, temperature=0, stream=True))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    final = events[-1]
    # the terminal event is response.completed (Codex waits for no other); the response
    # it carries says incomplete
    assert final.type == "response.completed" and deltas
    assert final.response.status == "incomplete"
    assert final.response.incomplete_details.reason == "max_output_tokens"
    assert final.response.output_text == "".join(deltas)
    assert final.response.usage.output_tokens == 8


def _forced_call(client: openai.OpenAI, stream: bool) -> tuple[list[Any], Any]:
    """A forced get_weather call; returns the input items that led to it plus the
    response's output, ready to send back, and the call."""
    arguments = {"model": MODEL, "input": ASK_WEATHER, "tools": [WEATHER],
                 "tool_choice": {"type": "function", "name": "get_weather"},
                 "max_output_tokens": 120, "temperature": 0}
    if stream:
        with client.responses.stream(**arguments) as events:
            arg_deltas = "".join(e.delta for e in events
                                 if e.type == "response.function_call_arguments.delta")
            reply = events.get_final_response()
    else:
        reply = client.responses.create(**arguments)
    assert reply.status == "completed"
    (call,) = [item for item in reply.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.call_id.startswith("call_")
    assert call.id.startswith("fc_") and call.status == "completed"
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    if stream:
        assert arg_deltas == call.arguments
    sent_back = [item.model_dump(exclude_none=True) for item in reply.output]
    return [*ASK_WEATHER, *sent_back], call


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_agent_loop_with_a_forced_tool_call(client: openai.OpenAI, stream: bool) -> None:
    history, call = _forced_call(client, stream)
    history.append({"type": "function_call_output", "call_id": call.call_id,
                    "output": json.dumps({"temperature": 21, "unit": "celsius"})})
    arguments = {"model": MODEL, "input": history, "tools": [WEATHER], "tool_choice": "none",
                 "max_output_tokens": 16, "temperature": 0}
    if stream:  # the SDK's stream helper wants response.completed: read the events
        final = list(client.responses.create(**arguments, stream=True))[-1].response
    else:
        final = client.responses.create(**arguments)
    assert final.status in ("completed", "incomplete")
    assert [item.type for item in final.output] == ["message"]
    assert final.usage.input_tokens > 40  # the call and its result are in the prompt


def test_tool_choice_required_and_auto(client: openai.OpenAI) -> None:
    reply = client.responses.create(model=MODEL, input=ASK_WEATHER, tools=[WEATHER],
                                    tool_choice="required", max_output_tokens=120,
                                    extra_body={"seed": 3})
    assert [item.type for item in reply.output] == ["function_call"]
    assert reply.tool_choice == "required" and reply.tools[0].name == "get_weather"
    reply = client.responses.create(model=MODEL, input=ASK_WEATHER, tools=[WEATHER],
                                    max_output_tokens=20)
    assert reply.output and all(i.type in ("message", "function_call") for i in reply.output)


SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 20},
    "age": {"type": "integer", "minimum": 0, "maximum": 120}},
    "required": ["name", "age"], "additionalProperties": False}


def test_text_format_json_schema_and_json_object(client: openai.OpenAI) -> None:
    fmt = {"type": "json_schema", "name": "person", "schema": SCHEMA, "strict": True}
    with client.responses.stream(model=MODEL, input="Describe a person as JSON.",
                                 text={"format": fmt}, max_output_tokens=200,
                                 extra_body={"seed": 1}) as stream:
        reply = stream.get_final_response()
    assert reply.status == "completed" and reply.text.format.type == "json_schema"
    jsonschema.validate(json.loads(reply.output_text), SCHEMA)
    reply = client.responses.create(model=MODEL, input="A JSON object, please.",
                                    text={"format": {"type": "json_object"}},
                                    max_output_tokens=200, extra_body={"seed": 5})
    assert reply.status == "completed"
    assert isinstance(json.loads(reply.output_text), dict)


def test_logprobs_come_when_included(client: openai.OpenAI) -> None:
    reply = client.responses.create(model=MODEL, input="The capital of France is",
                                    max_output_tokens=3, temperature=0, top_logprobs=2,
                                    include=["message.output_text.logprobs"])
    part = reply.output[0].content[0]
    assert len(part.logprobs) == 3 and "".join(lp.token for lp in part.logprobs) == part.text
    assert all(len(lp.top_logprobs) == 2 and lp.logprob <= 0 for lp in part.logprobs)


def test_input_tokens_counts_what_create_reads(port: int, client: openai.OpenAI) -> None:
    body = {"model": MODEL, "input": ASK_WEATHER, "instructions": "Be brief.",
            "tools": [WEATHER]}
    status, _, raw = request(port, "POST", "/v1/responses/input_tokens", body)
    counted = json.loads(raw)
    assert status == 200 and counted["object"] == "response.input_tokens"
    reply = client.responses.create(**body, max_output_tokens=1)
    assert counted["input_tokens"] == reply.usage.input_tokens
    if hasattr(client.responses, "input_tokens"):
        assert client.responses.input_tokens.count(**body).input_tokens == reply.usage.input_tokens


def test_codex_first_request_is_accepted(port: int) -> None:
    """Codex's real first request (developer messages, namespace and web_search tools,
    reasoning, include, client_metadata, ...) is read, not refused: counted whole, and
    answered once its long system prompt is cut to fit this small test context."""
    body = json.loads(CODEX_REQUEST.read_text())["body"]
    body["model"] = MODEL
    status, _, raw = request(port, "POST", "/v1/responses/input_tokens", body)
    assert status == 200 and json.loads(raw)["input_tokens"] > 5000
    body["input"] = [body["input"][0] | {"content": [{"type": "input_text",
                                                      "text": "You are Codex."}]},
                     *body["input"][2:]]
    body["tools"] = [tool for tool in body["tools"] if tool["type"] != "function"] + [WEATHER]
    data = check_sequence(raw_events(port, body | {"max_output_tokens": 6}))
    final = data[-1]["response"]
    assert [tool["name"] for tool in final["tools"]] == ["get_weather"]
    assert final["store"] is False and final["prompt_cache_key"] == body["prompt_cache_key"]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"previous_response_id": "resp_123"}, "previous_response_id", "stateless"),
        ({"conversation": "conv_1"}, "conversation", "stateless"),
        ({"input": [{"type": "function_call_output", "call_id": "call_9", "output": "x"}]},
         "input", "no function_call"),
        ({"input": ["hello"]}, "input", "input[0] must be an object"),
        ({"input": [{"type": "message", "role": "wizard", "content": "x"}]}, "input", "role"),
        ({"input": [{"type": "computer_call", "id": "c"}]}, "input", "not supported"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input", "keeps no items"),
        ({"input": [{"role": "user", "content": [{"type": "input_image",
                                                  "image_url": "data:,"}]}]},
         "input", "'input_image'"),
        ({"input": [{"type": "function_call", "call_id": "c", "arguments": "{}"}]},
         "input", "input[0].name"),
        ({"input": []}, "input", "empty"),
        ({"input": 7}, "input", "string or an array"),
        ({"temperature": "hot"}, "temperature", "number"),
        ({"max_output_tokens": "many"}, "max_output_tokens", "integer"),
        ({"tools": {"type": "function"}}, "tools", "array"),
        ({"tools": [{"type": "function", "parameters": {}}]}, "tools", "name"),
        ({"text": {"format": {"type": "xml"}}}, "text.format", "json_schema"),
        ({"tool_choice": "required"}, "tool_choice", "tools"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}},
         "tool_choice", "nope"),
        ({"reasoning": {"effort": "extreme"}}, "reasoning.effort", "effort"),
    ],
)
def test_bad_requests_get_openai_errors(client: openai.OpenAI, body: dict[str, Any],
                                        param: str, words: str) -> None:
    arguments = {"model": MODEL, "input": "Hi", "max_output_tokens": 4, **body}
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(**arguments)
    error = caught.value.body
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert words in error["message"]


def test_other_tool_types_are_left_out(client: openai.OpenAI) -> None:
    tools = [{"type": "web_search"}, {"type": "local_shell"},
             {"type": "namespace", "name": "agents", "tools": []}, WEATHER]
    reply = client.responses.create(model=MODEL, input="Hi", tools=tools, store=True,
                                    max_output_tokens=3, include=["reasoning.encrypted_content"],
                                    prompt_cache_key="session-1", metadata={"k": "v"},
                                    reasoning={"effort": "low", "summary": "auto"})
    assert [tool.type for tool in reply.tools] == ["function"]
    assert reply.store is False and reply.metadata == {"k": "v"}
    assert reply.reasoning.effort == "low"


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="nope", input="Hi")


def test_disconnect_mid_stream_frees_the_slot(port: int) -> None:
    assert wait_until(lambda: busy_slots(port) == 0)
    sock = connect(port, timeout=60)
    body = json.dumps({"model": MODEL, "input": "Count from 1 to 500.", "stream": True,
                       "max_output_tokens": 4000, "ignore_eos": True}).encode()
    sock.sendall(b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                 b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    received = b""
    while received.count(b"event: response.output_text.delta") < 3:
        received += sock.recv(65536)
    assert busy_slots(port) == 1
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
    assert wait_until(lambda: busy_slots(port) == 0, timeout=2.0)
