"""``ws://HOST:PORT/ws/generate`` end to end on the real embedded model."""

from __future__ import annotations

import json

from clients import WsClient, busy_slots, request_json
from conftest import wait_until
from wsproto.events import TextMessage


def receive_json(client: WsClient) -> dict:
    return json.loads(client.receive_text())


def run_request(client: WsClient, request: dict) -> tuple[list[str], dict]:
    client.send(TextMessage(data=json.dumps(request)))
    tokens: list[str] = []
    while True:
        frame = receive_json(client)
        if "token" in frame:
            assert set(frame) == {"token"} and isinstance(frame["token"], str)
            tokens.append(frame["token"])
            continue
        return tokens, frame


def http_text(port: int, **fields) -> dict:
    status, body = request_json(port, "POST", "/api/generate", fields)
    assert status == 200, body
    return body


def test_tokens_then_done_matches_http(port: int) -> None:
    request = {"model": "default", "prompt": "Hello world", "max_tokens": 12,
               "temperature": 0.7, "seed": 5}
    client = WsClient(port, "/ws/generate")
    client.sock.settimeout(60)
    tokens, done = run_request(client, request)
    client.close()
    assert done["done"] is True
    assert done["finish_reason"] in ("stop", "length")
    assert len(tokens) == done["usage"]["completion_tokens"] or done["finish_reason"] == "stop"
    expected = http_text(port, **request)["choices"][0]["text"]
    assert "".join(tokens) == expected


def test_several_requests_on_one_connection_and_errors_keep_it_open(port: int) -> None:
    client = WsClient(port, "/ws/generate")
    client.sock.settimeout(60)
    first, done = run_request(client, {"prompt": "One", "max_tokens": 3, "temperature": 0})
    assert done["done"] and done["usage"]["completion_tokens"] == 3

    client.send(TextMessage(data="{not json"))
    error = receive_json(client)
    assert error["error"]["code"] == "invalid_request"
    assert set(error["error"]) == {"code", "message", "details"}

    _, error = run_request(client, {"prompt": "x", "model": "missing"})
    assert error["error"]["code"] == "model_not_found"

    _, error = run_request(client, {"max_tokens": 3})
    assert error["error"]["code"] == "invalid_request"
    assert "prompt" in error["error"]["details"]

    _, error = run_request(client, {"prompt": "x", "max_tokens": 100_000})
    assert error["error"]["code"] == "invalid_request"

    again, done = run_request(client, {"prompt": "One", "max_tokens": 3, "temperature": 0})
    assert again == first and done["done"]
    client.close()


def test_disconnect_mid_generation_frees_the_slot(port: int) -> None:
    assert wait_until(lambda: busy_slots(port) == 0)
    client = WsClient(port, "/ws/generate")
    client.sock.settimeout(60)
    client.send(TextMessage(data=json.dumps(
        {"prompt": "Tell me a story.", "max_tokens": 4000, "ignore_eos": True})))
    for _ in range(3):
        assert "token" in receive_json(client)
    assert busy_slots(port) == 1
    client.close()
    assert wait_until(lambda: busy_slots(port) == 0, timeout=2.0)
