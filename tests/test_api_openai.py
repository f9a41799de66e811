"""The OpenAI API under /v1, driven by the real ``openai`` client on the real model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import openai
import pytest
from clients import request, sse_events
from conftest import ShimmyProcess, isolated_env
from tiny_model import write_spelling_model

MODEL = "gemma-3-270m-q4_k_m"
ASK = [{"role": "user", "content": "Name three colours."}]
WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"]}}}]
TIME = [{"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {
        "zone": {"type": "string", "maxLength": 20}}, "required": ["zone"]}}}]


@pytest.fixture
def client(port: int) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-local",
                         max_retries=0, timeout=120)


def test_models_list_and_retrieve(client: openai.OpenAI, model_path: Path) -> None:
    (model,) = client.models.list().data
    assert model.id == MODEL and model.object == "model" and model.owned_by == "shimmy"
    assert model.created == int(model_path.stat().st_mtime)
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("missing")
    assert caught.value.body["code"] == "model_not_found"


def test_chat_completion_shape_and_usage(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=12,
                                           temperature=0)
    assert reply.id.startswith("chatcmpl-") and reply.object == "chat.completion"
    assert reply.model == MODEL and reply.system_fingerprint
    (choice,) = reply.choices
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 12 and reply.usage.prompt_tokens > 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    if choice.finish_reason == "length":
        assert reply.usage.completion_tokens == 12
    assert "<start_of_turn>" not in choice.message.content
    assert "<end_of_turn>" not in choice.message.content


def test_chat_stream_follows_the_contract(port: int, client: openai.OpenAI) -> None:
    body = {"model": MODEL, "messages": ASK, "max_tokens": 10, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    events = list(sse_events(port, "/v1/chat/completions", body))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    first, *middle, final, usage = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("role" not in c["choices"][0]["delta"] for c in middle + [final])
    assert all(c["choices"][0]["finish_reason"] is None for c in [first, *middle])
    assert final["choices"][0]["delta"] == {}
    assert final["choices"][0]["finish_reason"] in ("stop", "length")
    assert all(c["usage"] is None for c in [first, *middle, final])
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] >= 1
    streamed = "".join(c["choices"][0]["delta"]["content"] for c in middle)
    whole = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=10,
                                           temperature=0)
    assert streamed == whole.choices[0].message.content


def test_stream_without_include_usage_has_no_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4,
                                            stream=True)
    chunks = list(stream)
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)


def test_multi_part_content_equals_joined_text(client: openai.OpenAI) -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "Name three"},
                                          {"type": "text", "text": "colours."}]}]
    joined = [{"role": "user", "content": "Name three\ncolours."}]
    a = client.chat.completions.create(model=MODEL, messages=parts, max_tokens=8, temperature=0)
    b = client.chat.completions.create(model=MODEL, messages=joined, max_tokens=8, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.prompt_tokens == b.usage.prompt_tokens


def test_system_and_multi_turn_messages(client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "You answer briefly."},
                {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "What is 2+2?"}]
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6)
    assert reply.usage.prompt_tokens > 20


def test_seed_reproducibility_and_stop(client: openai.OpenAI) -> None:
    kwargs = {"model": MODEL, "messages": ASK, "max_tokens": 16, "temperature": 1.0}
    one = client.chat.completions.create(seed=11, **kwargs).choices[0].message.content
    two = client.chat.completions.create(seed=11, **kwargs).choices[0].message.content
    assert one == two
    greedy = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=16,
                                            temperature=0).choices[0].message.content
    stop = greedy.split()[1]
    cut = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=16,
                                         temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == greedy[: greedy.index(stop)]


def test_chat_logprobs(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5,
                                           temperature=0, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    assert "".join(t.token for t in content) == reply.choices[0].message.content
    for token in content:
        assert token.logprob <= 0 and len(token.top_logprobs) == 3
        # greedy picks the most likely token, so it heads its own alternatives
        assert token.top_logprobs[0].token == token.token
        assert token.top_logprobs[0].logprob == pytest.approx(token.logprob)
        assert bytes(token.bytes).decode() == token.token


SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 30},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 20},
                "maxItems": 3}},
    "required": ["name", "age", "hobbies"], "additionalProperties": False}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_json_schema_output_validates(client: openai.OpenAI, seed: int) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Describe a person as JSON."}],
        max_tokens=200, seed=seed,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}})
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].message.content), SCHEMA)


def test_json_object_mode(client: openai.OpenAI) -> None:
    # the base model may ramble past max_tokens with some seeds (which ones depends on the
    # CPU's kernels): every answer it closes must be one object, and most seeds close it
    closed = 0
    for seed in (2, 3, 7):
        reply = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content":
                                    'Return a JSON object with one key "ok" set to true.'}],
            max_tokens=200, seed=seed, response_format={"type": "json_object"})
        if reply.choices[0].finish_reason == "stop":  # the grammar closed the object
            assert isinstance(json.loads(reply.choices[0].message.content), dict)
            closed += 1
    assert closed >= 2


@pytest.mark.parametrize("choice", ["required", {"type": "function",
                                                 "function": {"name": "get_time"}}])
def test_forced_tool_call_parses(client: openai.OpenAI, choice) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather in Paris, in celsius?"}],
        max_tokens=120, tools=WEATHER + TIME, tool_choice=choice, seed=3)
    (call,) = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls"
    assert reply.choices[0].message.content is None
    assert call.type == "function" and call.id.startswith("call_")
    expected = "get_time" if isinstance(choice, dict) else call.function.name
    assert call.function.name == expected
    arguments = json.loads(call.function.arguments)
    schema = (WEATHER + TIME)[0 if expected == "get_weather" else 1]["function"]["parameters"]
    jsonschema.validate(arguments, schema)


def test_forced_tool_call_streams_as_deltas(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather in Oslo?"}],
        max_tokens=120, tools=WEATHER, tool_choice="required", stream=True, seed=4)
    name, arguments, finish = None, "", None
    for chunk in stream:
        for delta_call in chunk.choices[0].delta.tool_calls or []:
            assert delta_call.index == 0
            name = delta_call.function.name or name
            arguments += delta_call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert name == "get_weather" and finish == "tool_calls"
    jsonschema.validate(json.loads(arguments), WEATHER[0]["function"]["parameters"])


def test_tool_messages_round_trip(client: openai.OpenAI) -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather",
                         "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
    ]
    reply = client.chat.completions.create(model=MODEL, messages=messages, tools=WEATHER,
                                           max_tokens=10)
    assert reply.usage.prompt_tokens > 40


@pytest.mark.exact_rows
def test_prefix_cache_shows_in_usage(client: openai.OpenAI) -> None:
    long_system = "You are a helpful assistant. " * 60  # > 256 tokens
    first = [{"role": "system", "content": long_system}, {"role": "user", "content": "Hi"}]
    reply = client.chat.completions.create(model=MODEL, messages=first, max_tokens=4,
                                           temperature=0)
    second = first + [{"role": "assistant", "content": reply.choices[0].message.content},
                      {"role": "user", "content": "And then?"}]
    again = client.chat.completions.create(model=MODEL, messages=second, max_tokens=4)
    cached = again.usage.prompt_tokens_details.cached_tokens
    # the whole first prompt and the answer's cells, which were generated, not read
    assert reply.usage.prompt_tokens < cached < again.usage.prompt_tokens


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"n": 2}, "n"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]},
         "messages"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"temperature": 3}, "temperature"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}],
          "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_bad_requests_raise_bad_request_error(client: openai.OpenAI, kwargs, param) -> None:
    arguments = {"model": MODEL, "messages": ASK, "max_tokens": 4, **kwargs}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**arguments)
    body = caught.value.body
    assert set(body) == {"message", "type", "param", "code"}
    assert body["type"] == "invalid_request_error" and body["message"]
    if param:
        assert body["param"] == param


def test_unknown_model_and_route_errors(port: int, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=ASK)
    status, _, raw = request(port, "GET", "/v1/nothing")
    assert status == 404 and json.loads(raw)["error"]["type"] == "invalid_request_error"
    status, _, raw = request(port, "POST", "/v1/chat/completions", b"{broken")
    error = json.loads(raw)["error"]
    assert status == 400 and set(error) == {"message", "type", "param", "code"}


def test_completions_text_tokens_echo_and_lists(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt="The capital of France is",
                                      max_tokens=6, temperature=0)
    assert reply.object == "text_completion" and reply.choices[0].text
    assert reply.usage.completion_tokens == 6 and reply.choices[0].finish_reason == "length"
    echoed = client.completions.create(model=MODEL, prompt="The capital of France is",
                                       max_tokens=6, temperature=0, echo=True)
    assert echoed.choices[0].text == "The capital of France is" + reply.choices[0].text
    tokens = [2, 818, 5279, 529, 7001, 563]  # the same prompt as token ids
    by_tokens = client.completions.create(model=MODEL, prompt=tokens, max_tokens=6,
                                          temperature=0)
    assert by_tokens.choices[0].text == reply.choices[0].text
    several = client.completions.create(model=MODEL, prompt=["One, two,", "Red, green,"],
                                        max_tokens=4, temperature=0)
    assert [c.index for c in several.choices] == [0, 1]
    assert several.usage.completion_tokens == 8


def test_completions_default_max_tokens_is_16(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt="Once upon a time",
                                      extra_body={"ignore_eos": True})
    assert reply.usage.completion_tokens == 16


def test_completions_stream_and_logprobs(client: openai.OpenAI) -> None:
    stream = client.completions.create(model=MODEL, prompt=["A", "B"], max_tokens=5,
                                       temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    texts = {0: "", 1: ""}
    finishes, usage = {}, None
    for chunk in stream:
        if not chunk.choices:
            usage = chunk.usage
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert set(finishes) == {0, 1} and usage.completion_tokens >= 2
    solo = client.completions.create(model=MODEL, prompt="A", max_tokens=5, temperature=0)
    assert texts[0] == solo.choices[0].text
    scored = client.completions.create(model=MODEL, prompt="A", max_tokens=3, temperature=0,
                                       logprobs=2)
    lp = scored.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 3
    assert "".join(lp.tokens) == scored.choices[0].text
    assert lp.text_offset[0] == 0 and all(len(t) == 2 for t in lp.top_logprobs)


def test_suffix_needs_infill_tokens(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="def f(", suffix="    return x")
    assert caught.value.body["param"] == "suffix"


def test_embeddings_need_an_embedding_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=MODEL, input="hello")
    assert "does not produce embeddings" in caught.value.body["message"]


@pytest.fixture(scope="module")
def embedding_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShimmyProcess]:
    home = tmp_path_factory.mktemp("home")
    models = tmp_path_factory.mktemp("models")
    write_spelling_model(models / "embedder.gguf", "Ω:wö 😀中!", pooling_type=1)
    process = ShimmyProcess(["--model-dirs", str(models), "--threads", "1"],
                            isolated_env(home), home)
    yield process
    process.stop()


def test_embeddings_from_an_embedding_model(embedding_server: ShimmyProcess) -> None:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{embedding_server.port}/v1",
                           api_key="x", max_retries=0)
    # the client asks for base64 unless told otherwise; both encodings must agree
    packed = client.embeddings.create(model="embedder", input=["ab", "xyz", "ab"])
    plain = client.embeddings.create(model="embedder", input=["ab", "xyz", "ab"],
                                     encoding_format="float")
    assert [d.index for d in plain.data] == [0, 1, 2]
    for a, b in zip(packed.data, plain.data, strict=True):
        assert a.embedding == pytest.approx(b.embedding, abs=1e-6)
    first, second, third = (d.embedding for d in plain.data)
    assert sum(x * x for x in first) == pytest.approx(1.0, abs=1e-4)
    assert first == third and second != first
    assert plain.usage.prompt_tokens == 10  # BOS and one token a byte
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="embedder", messages=ASK)
