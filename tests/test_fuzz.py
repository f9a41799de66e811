"""Property tests against the real server: generated requests never get a 5xx.

How the requests are counted (the goal is at least 10,000, zero 5xx, zero crashes):

* HTTP: ``HTTP_EXAMPLES`` examples, each ``BODIES`` generated bodies (JSON shaped like
  the APIs' requests, arbitrary JSON, raw bytes) sent to each of the ``JSON_ROUTES`` and,
  with ``"stream": true``, to the two that stream most, plus ``WILD`` requests with
  generated methods, paths, content types and bodies: 30 requests per example, pipelined
  over one keep-alive connection;
* WebSocket: ``WS_EXAMPLES`` examples of ``WS_BATCH`` generated messages on one
  connection to ``/ws/generate``;
* raw sockets: ``RAW_EXAMPLES`` byte strings or valid requests cut short, each on a fresh
  connection that is then half-closed.

Every response is counted as it is read (``COUNTS``); the last test checks the totals
and that the server's own ``shimmy_requests_total`` shows no 5xx at all.

The requests stay cheap: generated bodies may be anything, but a generation's size is
forced past the model's context (``max_tokens`` 9000 > 8192), so every field is
validated and the prompt tokenized, and then the request fails with 400 instead of
generating. Examples are derandomized: every run sends the same requests.
"""

from __future__ import annotations

import json
import socket
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from clients import WsClient, busy_slots, connect, request_json, wait_closed
from conftest import ShimmyProcess, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_metrics import scrape
from wsproto.events import CloseConnection, TextMessage

MODEL = "gemma-3-270m-q4_k_m"
HTTP_EXAMPLES, BODIES, WILD = 315, 4, 2
WS_EXAMPLES, WS_BATCH = 75, 8
RAW_EXAMPLES = 100
PAST_THE_CONTEXT = 9000
COUNTS: Counter[str] = Counter()

FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))

ROUTES = ["/api/generate", "/v1/completions", "/v1/chat/completions", "/v1/messages",
          "/v1/embeddings", "/api/show", "/api/models", "/v1/models", "/api/tags", "/api/ps",
          "/api/version", "/api/health", "/metrics", "/ws/generate", f"/v1/models/{MODEL}",
          "/", "/v1/models/default"]
GENERATION_ROUTES = ("/api/generate", "/v1/completions", "/v1/chat/completions",
                     "/v1/messages")
JSON_ROUTES = (*GENERATION_ROUTES, "/v1/embeddings")
STREAMED_ROUTES = ("/api/generate", "/v1/chat/completions")
PER_BODY = len(JSON_ROUTES) + len(STREAMED_ROUTES)

# --- strategies ---

leaves = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
          | st.text(max_size=12) | st.sampled_from(["", "default", MODEL, "../x", "\x00", "é😀"]))
json_values = st.recursive(
    leaves, lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)
small_ints = st.integers(-3, 70_000) | st.sampled_from([0, -1, 2**31, 2**63, 10**30])
numbers = st.floats() | small_ints
parts = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "image", "x"])},
                              optional={"text": st.text(max_size=20) | json_values})
contents = st.text(max_size=40) | st.lists(parts, max_size=3) | json_values
messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool", "developer", "bot"])},
    optional={"content": contents, "name": st.text(max_size=5), "tool_calls": json_values}),
    max_size=4) | json_values
schemas = st.recursive(
    st.fixed_dictionaries({"type": st.sampled_from(["string", "integer", "number", "boolean",
                                                    "null", "object", "array", "nope"])},
                          optional={"enum": st.lists(leaves, max_size=3),
                                    "minimum": numbers, "maxLength": small_ints}),
    lambda inner: st.fixed_dictionaries({"type": st.just("object")}, optional={
        "properties": st.dictionaries(st.text(max_size=6), inner, max_size=3),
        "required": st.lists(st.text(max_size=6), max_size=2),
        "items": inner, "anyOf": st.lists(inner, max_size=2)}), max_leaves=6)
tools = st.lists(st.fixed_dictionaries({"type": st.sampled_from(["function", "x"])}, optional={
    "function": st.fixed_dictionaries({"name": st.text(max_size=8)},
                                      optional={"parameters": schemas | json_values})}),
    max_size=2) | json_values
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(["default", MODEL, "", "nope", "../../etc/passwd"]) | json_values,
    "prompt": st.text(max_size=60) | st.lists(small_ints, max_size=5) | json_values,
    "max_tokens": small_ints | json_values, "temperature": numbers | json_values,
    "top_k": small_ints, "top_p": numbers, "min_p": numbers, "repeat_penalty": numbers,
    "repeat_last_n": small_ints, "frequency_penalty": numbers, "presence_penalty": numbers,
    "seed": small_ints | json_values, "stream": st.booleans() | json_values,
    "stop": st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=20) | json_values,
    "logit_bias": st.dictionaries(st.text(max_size=6) | st.integers().map(str), numbers,
                                  max_size=3) | json_values,
    "ignore_eos": st.booleans() | json_values, "messages": messages, "system": contents,
    "tools": tools, "tool_choice": st.sampled_from(["auto", "none", "required"]) | json_values,
    "response_format": st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "json_object", "json_schema", "yaml"])},
        optional={"json_schema": st.fixed_dictionaries({"name": st.text(max_size=5)},
                                                       optional={"schema": schemas})}),
    "n": small_ints, "logprobs": st.booleans() | small_ints, "top_logprobs": small_ints,
    "suffix": st.text(max_size=10) | json_values, "echo": st.booleans() | json_values,
    "stop_sequences": st.lists(st.text(max_size=5), max_size=3) | json_values,
    "input": st.text(max_size=20) | st.lists(st.text(max_size=8), max_size=3) | json_values,
    "stream_options": json_values, "name": st.text(max_size=8) | json_values,
}
shaped_bodies = st.fixed_dictionaries({}, optional=FIELDS).flatmap(
    lambda body: st.dictionaries(st.text(max_size=8), json_values, max_size=2).map(
        lambda extra: {**extra, **body}))
bodies = shaped_bodies | json_values | st.binary(max_size=80) | st.text(max_size=80)
paths = st.sampled_from(ROUTES) | st.text(max_size=20).map(lambda t: "/" + quote(t, safe="/%"))
methods = st.sampled_from(["POST"] * 6 + ["GET", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"])
content_types = st.sampled_from(["application/json", "text/plain", "", "application/x-www-form"
                                 "-urlencoded", "application/json; charset=utf-16"])


def no_generation(body: Any) -> Any:
    """Force the generation size past the context: validated, tokenized, refused. Every
    object gets it, whatever its route: a generated path may still name a generating one."""
    if isinstance(body, dict):
        return {**body, "max_tokens": PAST_THE_CONTEXT,
                "max_completion_tokens": PAST_THE_CONTEXT}
    return body


def encode(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8", "surrogatepass")
    return json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")


def http_request(method: str, path: str, body: Any, content_type: str = "application/json"
                 ) -> tuple[str, bytes]:
    data = encode(no_generation(body)) if method in ("POST", "PUT", "PATCH") else b""
    head = [f"{method} {path} HTTP/1.1", "Host: localhost"]
    if content_type:
        head.append(f"Content-Type: {content_type}")
    if data:
        head.append(f"Content-Length: {len(data)}")
    return method, ("\r\n".join(head) + "\r\n\r\n").encode() + data


wild_requests = st.builds(http_request, methods, paths, bodies, content_types)


@st.composite
def http_batches(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    """Each generated body to every JSON route, and a few wild requests."""
    batch = []
    for body in draw(st.lists(bodies, min_size=BODIES, max_size=BODIES)):
        batch += [http_request("POST", path, body) for path in JSON_ROUTES]
        if isinstance(body, dict):
            body = {**body, "stream": True}
        batch += [http_request("POST", path, body) for path in STREAMED_ROUTES]
    return batch + draw(st.lists(wild_requests, min_size=WILD, max_size=WILD))


# --- a pipelining keep-alive client ---


class Pipeline:
    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = connect(port, timeout=30)
        self.buffer = b""

    def exchange(self, batch: list[tuple[str, bytes]]) -> list[tuple[int, bytes]]:
        self.sock.sendall(b"".join(data for _, data in batch))
        return [self._response(method) for method, _ in batch]

    def _response(self, method: str) -> tuple[int, bytes]:
        head = self._until(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if method == "HEAD" or status in (204, 304):
            return status, b""
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int(self._until(b"\r\n"), 16):
                body += self._take(size)
                self._until(b"\r\n")
            self._until(b"\r\n")
            return status, body
        return status, self._take(int(headers.get("content-length", "0")))

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self._fill()
        found, _, self.buffer = self.buffer.partition(marker)
        return found

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed a keep-alive connection")
        self.buffer += chunk


@pytest.fixture(scope="module")
def pipeline(server: ShimmyProcess) -> Iterator[Pipeline]:
    client = Pipeline(server.port)
    yield client
    client.sock.close()


@pytest.fixture(scope="module")
def server_errors_before(server: ShimmyProcess) -> float:
    return server_errors(server.port)


def server_errors(port: int) -> float:
    return sum(count for (name, labels), count in scrape(port).items()
               if name == "shimmy_requests_total" and dict(labels)["status"].startswith("5"))


# --- the properties ---


@settings(FUZZ, max_examples=HTTP_EXAMPLES)
@given(batch=http_batches())
def test_generated_http_requests_never_get_a_5xx(pipeline: Pipeline,
                                                 server_errors_before: float,
                                                 batch: list[tuple[str, bytes]]) -> None:
    for (_, data), (status, body) in zip(batch, pipeline.exchange(batch), strict=True):
        COUNTS["http"] += 1
        COUNTS[f"http {status}"] += 1
        assert status < 500, (data[:300], body[:300])
        if body and status >= 400:
            json.loads(body)  # errors are JSON in every family's shape


# --- the Ollama listener: Ollama's request shapes; a context of 1 token refuses them all ---

OLLAMA_EXAMPLES = 60
OLLAMA_ROUTES = ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings",
                 "/api/show", "/api/pull")
option_names = st.sampled_from(["temperature", "top_k", "top_p", "min_p", "typical_p", "seed",
                                "num_predict", "stop", "repeat_penalty", "repeat_last_n",
                                "num_keep", "use_mmap", "mirostat"]) | st.text(max_size=8)
OLLAMA_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from([MODEL, f"{MODEL}:latest", "default", "nope:7b", ""])
    | json_values,
    "messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "tool", "x"])},
        optional={"content": st.text(max_size=30) | json_values, "images": json_values,
                  "tool_calls": json_values, "tool_name": st.text(max_size=5) | json_values,
                  "thinking": st.text(max_size=5) | json_values}), max_size=3) | json_values,
    "prompt": st.text(max_size=40) | json_values, "suffix": st.text(max_size=10) | json_values,
    "system": st.text(max_size=10) | json_values, "raw": st.booleans() | json_values,
    "template": st.sampled_from(["{{ .Prompt }}", "{{ if .System }}x{{ end }}{{ .Prompt }}",
                                 "{{ range .Messages }}", "{{ if"]) | json_values,
    "context": st.lists(small_ints, max_size=4) | json_values,
    "format": st.sampled_from(["json", "", "yaml"]) | schemas | json_values,
    "options": st.dictionaries(option_names, leaves | json_values, max_size=4) | json_values,
    "think": st.booleans() | st.sampled_from(["low", "max", "x"]) | json_values,
    "tools": tools, "stream": st.booleans() | json_values,
    "input": st.text(max_size=20) | st.lists(st.text(max_size=8), max_size=3) | json_values,
    "truncate": st.booleans() | json_values, "dimensions": small_ints | json_values,
}
ollama_bodies = st.fixed_dictionaries({}, optional=OLLAMA_FIELDS) | json_values


def one_token_context(body: Any) -> Any:
    """Ollama clamps num_predict rather than refusing it; ``num_ctx`` 1 leaves no room, so
    every generation is validated, rendered, tokenized and then refused with a 400."""
    if not isinstance(body, dict):
        return body
    options = body.get("options")
    return {**body, "options": {**(options if isinstance(options, dict) else {}),
                                "num_ctx": 1}}


def ollama_request(path: str, body: Any) -> tuple[str, bytes]:
    return http_request("POST", path, one_token_context(body))


@settings(FUZZ, max_examples=OLLAMA_EXAMPLES)
@given(bodies=st.lists(ollama_bodies, min_size=BODIES, max_size=BODIES))
def test_generated_ollama_requests_never_get_a_5xx(server: ShimmyProcess,
                                                   server_errors_before: float,
                                                   bodies: list[Any]) -> None:
    assert server.ollama_port is not None
    batch = [ollama_request(path, body) for body in bodies for path in OLLAMA_ROUTES]
    # a connection per example: a slow example must not meet the keep-alive timeout
    pipeline = Pipeline(server.ollama_port)
    try:
        answers = pipeline.exchange(batch)
    finally:
        pipeline.sock.close()
    for (_, data), (status, body) in zip(batch, answers, strict=True):
        COUNTS["ollama"] += 1
        COUNTS[f"ollama {status}"] += 1
        assert status < 500, (data[:300], body[:300])
        if status >= 400:
            assert set(json.loads(body)) == {"error"}, body[:300]  # Ollama's shape


def test_the_ollama_listener_left_no_slot_busy(server: ShimmyProcess) -> None:
    assert COUNTS["ollama"] >= OLLAMA_EXAMPLES * BODIES * len(OLLAMA_ROUTES), COUNTS
    assert COUNTS["ollama 400"] > 100 and COUNTS["ollama 200"] > 10, COUNTS  # validated
    assert wait_until(lambda: busy_slots(server.port) == 0, timeout=10)


ws_messages = (shaped_bodies | json_values).map(
    lambda body: json.dumps(no_generation(body), allow_nan=True)) | st.text(max_size=60)


@pytest.fixture(scope="module")
def websocket(server: ShimmyProcess) -> Iterator[WsClient]:
    client = WsClient(server.port, "/ws/generate")
    yield client
    client.close()


@settings(FUZZ, max_examples=WS_EXAMPLES)
@given(batch=st.lists(ws_messages, min_size=WS_BATCH, max_size=WS_BATCH))
def test_generated_websocket_messages_never_fail_the_server(websocket: WsClient,
                                                            batch: list[str]) -> None:
    for message in batch:
        websocket.send(TextMessage(data=message))
    for message in batch:
        frame = json.loads(websocket.receive_text())
        COUNTS["websocket"] += 1
        assert "error" in frame, (message, frame)  # nothing generates: all are refused
        assert frame["error"]["code"] not in ("server_error", "generation_failed"), frame


valid_request = st.builds(http_request, st.just("POST"), paths, bodies).map(lambda r: r[1])


@settings(FUZZ, max_examples=RAW_EXAMPLES)
@given(garbage=st.binary(max_size=200) | valid_request.flatmap(
    lambda data: st.integers(0, len(data)).map(lambda cut: data[:cut])))
def test_raw_garbage_and_truncated_requests(port: int, garbage: bytes) -> None:
    with connect(port, timeout=10) as sock:
        sock.sendall(garbage)
        sock.shutdown(socket.SHUT_WR)
        answer = wait_closed(sock, 10)
    COUNTS["raw"] += 1
    if answer:
        assert answer.startswith(b"HTTP/1.1 "), answer[:100]
        assert int(answer.split(b" ", 2)[1]) < 500, answer[:300]


def test_totals_and_the_server_is_unharmed(port: int, server_errors_before: float,
                                           websocket: WsClient) -> None:
    assert COUNTS["http"] >= HTTP_EXAMPLES * (BODIES * PER_BODY + WILD), COUNTS
    assert COUNTS["websocket"] >= WS_EXAMPLES * WS_BATCH, COUNTS
    assert COUNTS["http"] + COUNTS["websocket"] + COUNTS["raw"] >= 10_000
    assert COUNTS["http 400"] > 1000 and COUNTS["http 404"] > 100  # it reached validation
    assert server_errors(port) == server_errors_before
    websocket.send(CloseConnection(code=1000))
    status, body = request_json(port, "GET", "/api/health")
    assert status == 200 and body["status"] == "healthy"

