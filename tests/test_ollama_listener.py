"""The Ollama listener on the embedded model, driven by Ollama's own clients: the official
``ollama`` package, LangChain's ``ChatOllama``, and Open WebUI's and Continue's requests
replayed as those clients send them."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

import ollama
import openai
import pytest
from clients import busy_slots, request
from conftest import wait_until

import shimmy

NAME = "gemma-3-270m-q4_k_m"
TAGGED = f"{NAME}:latest"
GREEDY = {"temperature": 0, "num_predict": 12}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
# the JSON of a call to WEATHER_TOOL: a format that leaves the model no other answer
CALL_FORMAT = {"type": "object", "properties": {
    "name": {"type": "string", "enum": ["get_weather"]},
    "arguments": {"type": "object", "properties": {"city": {"type": "string",
                                                            "maxLength": 12}},
                  "required": ["city"]}}, "required": ["name", "arguments"]}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(ollama_port: int) -> ollama.Client:
    return ollama.Client(host=f"http://127.0.0.1:{ollama_port}")


def ndjson(port: int, path: str, body: Any, method: str = "POST"
           ) -> tuple[int, str, list[dict[str, Any]]]:
    """Status, content type and the parsed lines of a (streamed) answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, path, body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        lines = [json.loads(line) for line in response.read().splitlines() if line.strip()]
        return response.status, response.getheader("content-type", ""), lines
    finally:
        conn.close()


def assert_metrics(final: dict[str, Any] | Any) -> None:
    """The last object's counts and durations, measured (nanoseconds)."""
    get = final.get if isinstance(final, dict) else final.__getitem__
    assert get("done") is True
    assert get("prompt_eval_count") > 0 and get("eval_count") > 0
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(get(key), int), key
    assert get("prompt_eval_duration") > 0 and get("eval_duration") > 0
    assert get("total_duration") >= get("prompt_eval_duration") + get("eval_duration")
    assert get("total_duration") < 120 * 10**9


# --- probing and listing ---


def test_root_and_version_answer_as_ollama(ollama_port: int) -> None:
    for method in ("GET", "HEAD"):
        status, headers, body = request(ollama_port, method, "/")
        assert status == 200
        assert headers["content-type"].startswith("text/plain")
        assert body == (b"Ollama is running" if method == "GET" else b"")
    status, _, body = request(ollama_port, "GET", "/api/version")
    assert status == 200 and json.loads(body) == {"version": shimmy.__version__}


def test_list_show_and_ps(client: ollama.Client) -> None:
    (model,) = client.list().models
    assert model.model == TAGGED
    assert model.details.family == "gemma3" and model.details.format == "gguf"
    shown = client.show(TAGGED)
    assert shown.capabilities[0] == "completion"
    assert "thinking" not in shown.capabilities and "insert" not in shown.capabilities
    assert shown.modelinfo["general.architecture"] == "gemma3"
    assert isinstance(shown.template, str) and shown.details.parameter_size == "268.10M"
    client.chat(model=TAGGED, messages=ASK, options={"num_predict": 1})
    (running,) = client.ps().models
    assert running.model == TAGGED and running.context_length > 0
    assert running.expires_at is not None


# --- chat ---


def test_chat_whole_and_streamed_agree(client: ollama.Client) -> None:
    whole = client.chat(model=TAGGED, messages=ASK, options=GREEDY, stream=False)
    assert whole.message.role == "assistant" and whole.message.content
    assert whole.done_reason == "length" and whole.eval_count == 12
    assert_metrics(whole)
    pieces = list(client.chat(model=TAGGED, messages=ASK, options=GREEDY, stream=True))
    *body, last = pieces
    assert body and all(not p.done and p.message.role == "assistant" for p in body)
    assert "".join(p.message.content for p in body) == whole.message.content
    assert last.message.content == "" and last.done_reason == "length"
    assert last.prompt_eval_count == whole.prompt_eval_count
    assert_metrics(last)


def test_chat_streams_ndjson_by_default(ollama_port: int) -> None:
    status, kind, lines = ndjson(ollama_port, "/api/chat",
                                 {"model": NAME, "messages": ASK, "options": GREEDY})
    assert status == 200 and kind == "application/x-ndjson"
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    assert all(line["model"] == NAME and line["created_at"].endswith("Z") for line in lines)


def test_chat_options_stop_and_num_predict(client: ollama.Client) -> None:
    free = client.chat(model=TAGGED, messages=ASK, options=GREEDY).message.content
    cut = free[len(free) // 2:][:3]
    stopped = client.chat(model=TAGGED, messages=ASK, options={**GREEDY, "stop": [cut]})
    assert stopped.message.content == free[:free.index(cut)]
    assert stopped.done_reason == "stop"
    # unknown options are ignored, as Ollama ignores them
    again = client.chat(model=TAGGED, messages=ASK,
                        options={**GREEDY, "mirostat": 2, "num_gpu": 1, "nonsense": "x"})
    assert again.message.content == free


def test_chat_seeded_sampling_repeats(client: ollama.Client) -> None:
    options = {"temperature": 0.9, "seed": 42, "num_predict": 10, "top_k": 20}
    first = client.chat(model=TAGGED, messages=ASK, options=options).message.content
    assert client.chat(model=TAGGED, messages=ASK, options=options).message.content == first


def test_chat_with_history_and_a_tool_turn(client: ollama.Client) -> None:
    messages = [*ASK, {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_name": "get_weather", "content": "18 degrees, sunny"}]
    answer = client.chat(model=TAGGED, messages=messages, tools=[WEATHER_TOOL],
                         options=GREEDY)
    assert answer.message.content and answer.done


def test_a_tool_call_through_tools_and_a_forced_format(client: ollama.Client) -> None:
    answer = client.chat(model=TAGGED, messages=ASK, tools=[WEATHER_TOOL],
                         format=CALL_FORMAT, options={"temperature": 0, "num_predict": 60})
    (call,) = answer.message.tool_calls
    assert call.function.name == "get_weather"
    assert isinstance(call.function.arguments["city"], str)
    assert answer.message.content == "" and answer.done_reason == "stop"
    streamed = list(client.chat(model=TAGGED, messages=ASK, tools=[WEATHER_TOOL],
                                format=CALL_FORMAT, stream=True,
                                options={"temperature": 0, "num_predict": 60}))
    calls = [call for piece in streamed for call in piece.message.tool_calls or ()]
    assert [c.function.arguments for c in calls] == [call.function.arguments]


def test_json_format(client: ollama.Client) -> None:
    answer = client.chat(model=TAGGED, messages=ASK, format="json",
                         options={"temperature": 0, "num_predict": 40})
    if answer.done_reason == "stop":
        json.loads(answer.message.content)
    else:  # cut by num_predict: still JSON's beginning
        assert answer.message.content.lstrip()[:1] in "{[\"-0123456789tfn"


def test_think_on_a_model_that_does_not_think(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model=TAGGED, messages=ASK, think=True, options=GREEDY)
    assert caught.value.status_code == 400
    assert caught.value.error == f'"{TAGGED}" does not support thinking'
    plain = client.chat(model=TAGGED, messages=ASK, think=False, options=GREEDY)
    assert plain.message.content and not plain.message.thinking


def test_empty_messages_load_the_model(client: ollama.Client) -> None:
    loaded = client.chat(model=TAGGED, messages=[])
    assert loaded.done and loaded.done_reason == "load" and loaded.message.content == ""


# --- generate ---


def test_generate_raw_is_the_plain_completion(client: ollama.Client, port: int) -> None:
    prompt = "The capital of France is"
    raw = client.generate(model=TAGGED, prompt=prompt, raw=True, options=GREEDY)
    completion = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x") \
        .completions.create(model=NAME, prompt=prompt, max_tokens=12, temperature=0)
    assert raw.response == completion.choices[0].text
    assert raw.eval_count == 12 and raw.context is None
    assert_metrics(raw)


def test_generate_templated_streams_and_returns_context(client: ollama.Client) -> None:
    pieces = list(client.generate(model=TAGGED, prompt="Say hi", system="Be brief.",
                                  options=GREEDY, stream=True))
    *body, last = pieces
    whole = client.generate(model=TAGGED, prompt="Say hi", system="Be brief.",
                            options=GREEDY)
    assert "".join(p.response for p in body) == whole.response
    assert last.done and last.response == "" and last.context == whole.context
    assert len(whole.context) > whole.prompt_eval_count  # the prompt's tokens, then the answer's
    assert_metrics(last)


def test_generate_with_a_go_template(client: ollama.Client) -> None:
    template = "{{ if .System }}{{ .System }} {{ end }}Q: {{ .Prompt }}\nA:"
    answer = client.generate(model=TAGGED, prompt="2+2?", system="Math.", template=template,
                             options=GREEDY)
    raw = client.generate(model=TAGGED, prompt="Math. Q: 2+2?\nA:", raw=True, options=GREEDY)
    assert answer.response == raw.response


def test_generate_with_suffix_needs_infill_tokens(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.generate(model=TAGGED, prompt="def f(", suffix="    return x")
    assert caught.value.status_code == 400
    assert caught.value.error == f'"{TAGGED}" does not support insert'


def test_generate_empty_prompt_loads(client: ollama.Client) -> None:
    loaded = client.generate(model=TAGGED)
    assert loaded.done and loaded.done_reason == "load" and loaded.response == ""


def test_shimmys_own_generate_keeps_its_shape(port: int) -> None:
    status, _, body = request(port, "POST", "/api/generate",
                              {"model": NAME, "prompt": "Hi", "max_tokens": 2})
    assert status == 200 and "choices" in json.loads(body)


# --- the clients' own sequences, replayed ---


def test_open_webui_sequence(ollama_port: int) -> None:
    """Open WebUI's Ollama connection: it verifies with /api/version, lists /api/tags and
    /api/ps, then streams /api/chat with the name it listed (":latest" added)."""
    headers = {"Content-Type": "application/json"}
    for path in ("/api/version", "/api/tags", "/api/ps"):
        status, _, body = request(ollama_port, "GET", path, headers=headers)
        assert status == 200, body
    listed = json.loads(request(ollama_port, "GET", "/api/tags")[2])["models"][0]["model"]
    payload = {"model": listed, "messages": [{"role": "user", "content": "Hello!"}],
               "stream": True, "options": {"temperature": 0.8, "num_predict": 8}}
    status, kind, lines = ndjson(ollama_port, "/api/chat", payload)
    assert status == 200 and kind == "application/x-ndjson"
    assert "".join(line["message"]["content"] for line in lines)
    assert lines[-1]["done"] and lines[-1]["done_reason"] == "length"


def test_continue_plain_autocomplete(ollama_port: int) -> None:
    """Continue's autocomplete for a model without FIM: ``raw`` with its options."""
    payload = {"model": TAGGED, "prompt": "def add(a, b):\n    return", "raw": True,
               "options": {"temperature": 0.01, "num_predict": 8, "stop": ["\n\n"],
                           "num_ctx": 8192}, "keep_alive": 1800}
    status, kind, lines = ndjson(ollama_port, "/api/generate", payload)
    assert status == 200 and kind == "application/x-ndjson"
    assert lines[-1]["done"] and "context" not in lines[-1]


def test_openai_routes_on_the_ollama_listener(ollama_port: int) -> None:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{ollama_port}/v1", api_key="x",
                           max_retries=0)
    assert [m.id for m in client.models.list().data] == [NAME]
    reply = client.chat.completions.create(model=TAGGED, messages=ASK, max_tokens=4)
    assert reply.choices[0].message.content is not None
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=ASK)
    assert "error" in caught.value.body or "message" in caught.value.body


# --- errors: Ollama's shape and status ---


@pytest.mark.parametrize(("path", "body", "status", "error"), [
    ("/api/chat", {"model": "nope", "messages": ASK}, 404,
     'model "nope" not found, try pulling it first'),
    ("/api/generate", {"model": "nope:7b", "prompt": "x"}, 404,
     'model "nope:7b" not found, try pulling it first'),
    ("/api/chat", {"messages": ASK}, 400, "model is required"),
    ("/api/chat", {"model": NAME, "messages": ASK, "options": {"temperature": "hot"}}, 400,
     'option "temperature" must be of type float32'),
    ("/api/chat", {"model": NAME, "messages": ASK, "options": {"num_predict": "5"}}, 400,
     'option "num_predict" must be of type integer'),
    ("/api/generate", {"model": NAME, "prompt": "x", "options": {"stop": "x"}}, 400,
     'option "stop" must be of type array'),
    ("/api/generate", {"model": NAME, "prompt": "x", "options": {"use_mmap": 1}}, 400,
     'option "use_mmap" must be of type boolean'),
    ("/api/generate", {"model": NAME, "prompt": "x", "raw": True, "system": "s"}, 400,
     "raw mode does not support template, system, or context"),
    ("/api/generate", {"model": NAME, "prompt": "x", "template": "{{ range .Messages }}"},
     400, None),
    ("/api/chat", {"model": NAME, "messages": [{"role": "user", "content": "hi",
                                                "images": ["aGk="]}]}, 400, None),
    ("/api/chat", {"model": NAME, "messages": ASK, "format": "yaml"}, 400, None),
    ("/api/embed", {"model": NAME, "input": "hi"}, 400, None),
    ("/api/push", {"model": NAME}, 400, None),
    ("/api/create", {"model": "x", "from": NAME}, 400, None),
    ("/api/copy", {"source": NAME, "destination": "y"}, 400, None),
    ("/api/show", {"model": "nope"}, 404, 'model "nope" not found, try pulling it first'),
])
def test_errors_have_ollamas_shape(ollama_port: int, path: str, body: dict, status: int,
                                   error: str | None) -> None:
    got, headers, data = request(ollama_port, "POST", path, body)
    assert got == status, data
    assert headers["content-type"] == "application/json"
    answer = json.loads(data)
    assert set(answer) == {"error"} and isinstance(answer["error"], str), answer
    if error is not None:
        assert answer["error"] == error


def test_malformed_bodies_and_routes(ollama_port: int) -> None:
    for body in (b"{", b"", b"[1]"):
        status, _, data = request(ollama_port, "POST", "/api/chat", body)
        assert status == 400 and set(json.loads(data)) == {"error"}
    status, _, data = request(ollama_port, "GET", "/api/nothing")
    assert status == 404 and set(json.loads(data)) == {"error"}
    status, _, data = request(ollama_port, "DELETE", "/api/delete", {"model": NAME})
    assert status == 400 and "does not delete" in json.loads(data)["error"]


def test_pull_of_a_model_shimmy_has(client: ollama.Client) -> None:
    statuses = [p.status for p in client.pull(TAGGED, stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert client.pull(NAME).status == "success"
    with pytest.raises(ollama.ResponseError) as caught:
        client.pull("llama3.2")
    assert caught.value.status_code == 404 and "--model-dirs" in caught.value.error


def test_a_client_that_leaves_frees_its_slot(ollama_port: int, port: int) -> None:
    body = json.dumps({"model": NAME, "messages": ASK,
                       "options": {"num_predict": 2000}}).encode()
    with socket.create_connection(("127.0.0.1", ollama_port), timeout=30) as sock:
        sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
                     b"application/json\r\nContent-Length: " + str(len(body)).encode()
                     + b"\r\n\r\n" + body)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    assert wait_until(lambda: busy_slots(port) == 0, timeout=10)
