"""The shimmy-native HTTP API, end to end on the real embedded model."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable

import pytest
from clients import busy_slots, connect, request, request_json, sse_events
from conftest import wait_until

GREEDY = {"temperature": 0}


def generate(port: int, **fields) -> dict:
    status, body = request_json(port, "POST", "/api/generate", fields)
    assert status == 200, body
    return body


def stream_text(port: int, **fields) -> tuple[list[str], dict]:
    events = list(sse_events(port, "/api/generate", {**fields, "stream": True}))
    assert events[-1] == "[DONE]"
    *pieces, final = events[:-1]
    texts = [event["choices"][0]["text"] for event in pieces]
    for event in pieces:
        assert set(event) == {"choices"} and set(event["choices"][0]) == {"text", "index"}
    return texts, final


def assert_error(status: int, body: dict, expected_status: int, code: str) -> str:
    assert status == expected_status, body
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    return body["error"]["details"]


def test_health_reports_loaded_models_and_real_memory(port: int) -> None:
    status, body = request_json(port, "GET", "/api/health")
    assert status == 200
    assert body["status"] == "healthy"
    assert body["models_loaded"] == 1
    value = re.fullmatch(r"(\d+\.\d)(KB|MB|GB)", body["memory_usage"])
    assert value, body["memory_usage"]
    # the model's weights and KV cache are resident: far more than an empty interpreter
    assert value.group(2) == "GB" or float(value.group(1)) > 100


def test_models_lists_the_model_with_metadata(port: int, model_path) -> None:
    status, body = request_json(port, "GET", "/api/models")
    assert status == 200
    (model,) = body["models"]
    assert model["id"] == "gemma-3-270m-q4_k_m"
    assert model["default"] is True and model["loaded"] is True
    assert model["description"]
    assert model["metadata"]["architecture"] == "gemma3"
    assert model["metadata"]["quantization"] == "Q4_K_M"
    assert model["size"] == model_path.stat().st_size
    assert model["slots"]["total"] == 4


def test_generate_defaults_and_usage(port: int) -> None:
    body = generate(port, model="gemma-3-270m-q4_k_m", prompt="The capital of France is",
                    seed=7)
    (choice,) = body["choices"]
    assert set(body) == {"choices", "usage"}
    assert choice["index"] == 0 and isinstance(choice["text"], str)
    usage = body["usage"]
    assert usage["prompt_tokens"] == 6  # BOS + five words
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 1 <= usage["completion_tokens"] <= 100  # default max_tokens
    if choice["finish_reason"] == "length":
        assert usage["completion_tokens"] == 100


def test_max_tokens_gives_length(port: int) -> None:
    body = generate(port, prompt="Count: one, two, three,", max_tokens=5, **GREEDY)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5
    assert body["choices"][0]["text"]


def test_default_model_name_means_the_default_model(port: int) -> None:
    named = generate(port, model="gemma-3-270m-q4_k_m", prompt="Paris is", max_tokens=8, **GREEDY)
    default = generate(port, model="default", prompt="Paris is", max_tokens=8, **GREEDY)
    assert named["choices"][0]["text"] == default["choices"][0]["text"]


def test_stop_string_ends_generation_before_it(port: int) -> None:
    prompt = "The capital of France is"
    full = generate(port, prompt=prompt, max_tokens=20, **GREEDY)["choices"][0]["text"]
    words = full.split()
    assert len(words) > 3, full
    stop = " " + words[2]
    cut = generate(port, prompt=prompt, max_tokens=20, stop=[stop, "never-appears"], **GREEDY)
    (choice,) = cut["choices"]
    assert choice["finish_reason"] == "stop"
    assert choice["text"] == full[: full.index(stop)]
    assert stop not in choice["text"]


def test_stop_string_in_stream_is_not_leaked(port: int) -> None:
    prompt = "The capital of France is"
    full = generate(port, prompt=prompt, max_tokens=20, **GREEDY)["choices"][0]["text"]
    stop = full[len(full) // 2: len(full) // 2 + 4]
    pieces, final = stream_text(port, prompt=prompt, max_tokens=20, stop=stop, **GREEDY)
    assert "".join(pieces) == full[: full.index(stop)]
    assert final["choices"][0]["finish_reason"] == "stop"


def test_same_seed_same_text_and_seeds_differ(port: int) -> None:
    fields = {"prompt": "Write a short poem about the sea.", "max_tokens": 24,
              "temperature": 1.0}
    first = generate(port, seed=1234, **fields)["choices"][0]["text"]
    again = generate(port, seed=1234, **fields)["choices"][0]["text"]
    assert first == again
    others = {generate(port, seed=seed, **fields)["choices"][0]["text"] for seed in (1, 2, 3)}
    assert len(others | {first}) > 1


def test_sampling_fields_are_accepted_and_change_output(port: int) -> None:
    fields = {"prompt": "List some fruits: apple, banana,", "max_tokens": 24, **GREEDY}
    plain = generate(port, **fields)["choices"][0]["text"]
    penalised = generate(port, repeat_penalty=1.5, frequency_penalty=1.0, presence_penalty=1.0,
                         **fields)["choices"][0]["text"]
    tuned = generate(port, prompt=fields["prompt"], max_tokens=8, temperature=0.8, top_k=5,
                     top_p=0.9, min_p=0.1, seed=3)
    assert tuned["usage"]["completion_tokens"] >= 1
    assert plain != penalised


def test_logit_bias_forbids_a_token(port: int) -> None:
    prompt = "The capital of France is"
    first = generate(port, prompt=prompt, max_tokens=1, **GREEDY)["choices"][0]["text"]
    assert first == " the"
    biased = generate(port, prompt=prompt, max_tokens=1, logit_bias={"506": -100}, **GREEDY)
    assert biased["choices"][0]["text"] != first


def test_stream_matches_non_stream(port: int) -> None:
    fields = {"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0.7, "seed": 42}
    whole = generate(port, **fields)
    pieces, final = stream_text(port, **fields)
    assert len(pieces) > 1
    assert "".join(pieces) == whole["choices"][0]["text"]
    assert final["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert final["usage"] == whole["usage"]


def test_stream_headers_and_framing(port: int) -> None:
    status, headers, body = request(port, "POST", "/api/generate",
                                    {"prompt": "Hi", "max_tokens": 3, "stream": True})
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert headers.get("transfer-encoding") == "chunked"
    events = body.decode().split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    for event in events[:-2]:
        assert event.startswith("data: {")
        json.loads(event[len("data: "):])


def is_cjk(char: str) -> bool:
    return "\u3040" <= char <= "\u9fff"


def is_emoji(char: str) -> bool:
    return ord(char) >= 0x1F300


@pytest.mark.parametrize(
    ("prompt", "wanted"),
    [
        ("日本の首都は東京です。日本で一番高い山は", is_cjk),
        ("I love pizza 🍕🍕. I love cake 🎂🎂. I love sushi", is_emoji),
    ],
)
def test_cjk_and_emoji_stream_intact(port: int, prompt: str, wanted: Callable[[str], bool]
                                     ) -> None:
    """Characters of several bytes, split across tokens, reach the stream whole (the model's
    greedy words are its own: only that it answers in such characters is asked)."""
    fields = {"prompt": prompt, "max_tokens": 16, **GREEDY}
    whole = generate(port, **fields)["choices"][0]["text"]
    pieces, _ = stream_text(port, **fields)
    assert "".join(pieces) == whole
    assert any(wanted(char) for char in whole), whole
    assert "\ufffd" not in whole


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "'prompt' is required"),
        ({"prompt": 5}, "'prompt' must be a string"),
        ({"prompt": "x", "max_tokens": "5"}, "'max_tokens' must be an integer"),
        ({"prompt": "x", "max_tokens": 0}, "'max_tokens' must be between"),
        ({"prompt": "x", "max_tokens": True}, "'max_tokens' must be an integer"),
        ({"prompt": "x", "temperature": -1}, "'temperature' must be between"),
        ({"prompt": "x", "temperature": "hot"}, "'temperature' must be a number"),
        ({"prompt": "x", "top_p": 1.5}, "'top_p' must be between"),
        ({"prompt": "x", "stream": "yes"}, "'stream' must be true or false"),
        ({"prompt": "x", "stop": 3}, "'stop' must be a string or a list"),
        ({"prompt": "x", "seed": "s"}, "'seed' must be an integer"),
        ({"prompt": "x", "logit_bias": {"abc": 1}}, "is not a token id"),
        ({"prompt": "x", "model": 3}, "'model' must be a string"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_invalid_fields_are_invalid_request(port: int, body, fragment: str) -> None:
    status, answer = request_json(port, "POST", "/api/generate", body)
    assert fragment in assert_error(status, answer, 400, "invalid_request")


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe", b'{"prompt": "x"'])
def test_malformed_json_is_invalid_request(port: int, raw: bytes) -> None:
    status, _, body = request(port, "POST", "/api/generate", raw)
    assert_error(status, json.loads(body), 400, "invalid_request")


def test_unknown_model_is_404(port: int) -> None:
    status, body = request_json(port, "POST", "/api/generate", {"model": "nope", "prompt": "x"})
    assert "nope" in assert_error(status, body, 404, "model_not_found")


def test_prompt_beyond_context_names_the_numbers(port: int) -> None:
    status, body = request_json(port, "POST", "/api/generate",
                                {"prompt": "word " * 100, "max_tokens": 8150})
    details = assert_error(status, body, 400, "invalid_request")
    assert "8150" in details and "8192" in details and "102 tokens" in details


def test_unknown_route_and_method(port: int) -> None:
    status, body = request_json(port, "GET", "/api/nothing")
    assert_error(status, body, 404, "not_found")
    status, headers, raw = request(port, "DELETE", "/api/health")
    assert_error(status, json.loads(raw), 405, "method_not_allowed")
    assert "GET" in headers["allow"]
    status, body = request_json(port, "GET", "/api/generate")
    assert_error(status, body, 405, "method_not_allowed")


def test_head_answers_without_body(port: int) -> None:
    status, headers, body = request(port, "HEAD", "/api/health")
    assert status == 200 and body == b""
    assert int(headers["content-length"]) > 0


def test_body_size_limit(port: int) -> None:
    status, _, body = request(port, "POST", "/api/generate", b"x" * (17 * 1024 * 1024))
    assert status == 413
    assert json.loads(body)["error"]["code"] == "invalid_request"


def test_keep_alive_serves_several_requests_on_one_connection(port: int) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(3):
        conn.request("POST", "/api/generate", body=b'{"prompt": "Hi", "max_tokens": 2}')
        response = conn.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["usage"]["completion_tokens"] <= 2
    conn.close()


def test_chunked_request_body(port: int) -> None:
    payload = json.dumps({"prompt": "Hi", "max_tokens": 2}).encode()
    sock = connect(port, timeout=60)
    head = (b"POST /api/generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n")
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part)
                      for part in (payload[:10], payload[10:]))
    sock.sendall(head + chunks + b"0\r\n\r\n")
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    assert data.startswith(b"HTTP/1.1 200")
    assert b'"usage"' in data


def test_disconnect_mid_stream_frees_the_slot(port: int) -> None:
    assert wait_until(lambda: busy_slots(port) == 0)
    sock = connect(port, timeout=60)
    body = json.dumps({"prompt": "Tell me a long story.", "max_tokens": 4000,
                       "stream": True, "ignore_eos": True}).encode()
    sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    received = b""
    while received.count(b"data: ") < 3:
        received += sock.recv(65536)
    assert busy_slots(port) == 1
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
    assert wait_until(lambda: busy_slots(port) == 0, timeout=2.0)


@pytest.mark.exact_rows
def test_eight_concurrent_requests_match_their_solo_text(port: int) -> None:
    prompts = [f"Fact number {i} about the moon:" for i in range(8)]
    fields = {"max_tokens": 24, "temperature": 0.8}
    solo = [generate(port, prompt=p, seed=100 + i, **fields)["choices"][0]["text"]
            for i, p in enumerate(prompts)]
    results: list[str | None] = [None] * 8

    def run(i: int) -> None:
        results[i] = generate(port, prompt=prompts[i], seed=100 + i, **fields)["choices"][0]["text"]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert results == solo


def test_logit_bias_outside_the_vocabulary_is_refused(port: int) -> None:
    status, body = request_json(port, "POST", "/api/generate",
                                {"prompt": "x", "logit_bias": {"99999999": 5}})
    assert "logit_bias" in assert_error(status, body, 400, "invalid_request")


def test_null_model_means_the_default(port: int) -> None:
    assert generate(port, model=None, prompt="Hi", max_tokens=1)["usage"]["completion_tokens"]
