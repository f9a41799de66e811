"""``GET /metrics`` (Prometheus text) and the request log (text and JSON lines)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import WsClient, request, request_json, sse_events
from conftest import ShimmyProcess, isolated_env, wait_until
from tiny_model import write_spelling_model
from wsproto.events import TextMessage

from shimmy.engine.scheduler import TokenRate
from shimmy.logs import RequestRecord, _logfmt, log_request, record_fields
from shimmy.metrics import Counter, Gauge, Histogram, Metrics, render

MODEL = "gemma-3-270m-q4_k_m"
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text page, keyed by name and labels; checks the syntax."""
    samples = {}
    typed = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        labels = frozenset(LABEL.findall(match.group(3) or ""))
        samples[(match.group(1), labels)] = float(match.group(4))
    for name, _ in samples:
        assert any(name == t or name.startswith(t + "_") for t in typed), f"untyped {name}"
    return samples


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, headers, body = request(port, "GET", "/metrics")
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse_metrics(body.decode())


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def metric(port: int, name: str, **labels: str) -> float:
    return value(scrape(port), name, **labels)


# --- the format ---


def test_counter_gauge_histogram_text() -> None:
    counter = Counter("x_total", "Things", ("route",))
    counter.inc('/a"b\\c\n')
    counter.inc('/a"b\\c\n', amount=2)
    gauge = Gauge("y", "Level")
    gauge.set(value=1.5)
    histogram = Histogram("z_seconds", "Time", ("model",), buckets=(0.1, 1.0))
    for seconds in (0.05, 0.5, 5.0):
        histogram.observe(seconds, "m")
    text = render([counter, gauge, histogram])
    assert text.splitlines() == [
        "# HELP x_total Things", "# TYPE x_total counter",
        'x_total{route="/a\\"b\\\\c\\n"} 3',
        "# HELP y Level", "# TYPE y gauge", "y 1.5",
        "# HELP z_seconds Time", "# TYPE z_seconds histogram",
        'z_seconds_bucket{model="m",le="0.1"} 1', 'z_seconds_bucket{model="m",le="1"} 2',
        'z_seconds_bucket{model="m",le="+Inf"} 3', 'z_seconds_sum{model="m"} 5.55',
        'z_seconds_count{model="m"} 3',
    ]
    parse_metrics(text)


def test_request_records_become_metrics_and_log_fields() -> None:
    class FakeGeneration:
        prompt_tokens, completion_tokens, cached_tokens = 300, 11, 256
        submitted_at, first_piece_at, finished_at = 10.0, 10.2, 11.2
        finish_reason, error = "length", None

    metrics = Metrics()
    record = RequestRecord("abc", "POST", "/v1/completions", "127.0.0.1:5", route="/v1/completions")
    record.model = "m"
    record.generations.append(FakeGeneration())
    metrics.request_started(record)
    record.finish(200)
    metrics.request_finished(record)
    samples = parse_metrics(render(metrics.all()))
    assert value(samples, "shimmy_requests_total", method="POST", route="/v1/completions",
                 status="200") == 1
    assert value(samples, "shimmy_requests_in_flight") == 0
    assert value(samples, "shimmy_prompt_tokens_total", model="m") == 300
    assert value(samples, "shimmy_generated_tokens_total", model="m") == 11
    assert value(samples, "shimmy_prompt_cache_hit_tokens_total", model="m") == 256
    assert value(samples, "shimmy_prompt_cache_hits_total", model="m") == 1
    assert value(samples, "shimmy_prompt_cache_lookups_total", model="m") == 1
    assert value(samples, "shimmy_generations_total", model="m", outcome="length") == 1
    assert value(samples, "shimmy_time_to_first_token_seconds_count", model="m") == 1
    assert value(samples, "shimmy_tokens_per_second_sum", model="m") == pytest.approx(10.0)
    fields = record_fields(record)
    assert fields["ttft_ms"] == pytest.approx(200.0) and fields["tokens_per_s"] == 10.0
    assert fields["completion_tokens"] == 11 and fields["outcome"] == "length"


def test_token_rate_averages_the_last_window() -> None:
    rate = TokenRate(window=10.0)
    assert rate.rate(now=100.0) == 0.0
    for second in range(20):  # 30 tokens a second for 20 s
        for step in range(3):
            rate.add(10, now=100.0 + second + step / 3)
    assert rate.total == 600
    assert rate.rate(now=120.0) == pytest.approx(30.0, rel=0.12)
    assert rate.rate(now=125.0) == pytest.approx(15.0, rel=0.25)  # half the window idle
    assert rate.rate(now=131.0) == 0.0  # nothing in the last 10 s
    rate.add(0, now=200.0)
    assert rate.rate(now=200.0) == 0.0


def test_text_request_line(caplog: pytest.LogCaptureFixture) -> None:
    record = RequestRecord("r1", "GET", "/api/models", "127.0.0.1:9", route="/api/models")
    record.finish(200)
    with caplog.at_level(logging.INFO, logger="shimmy.access"):
        log_request(record)
    (line,) = caplog.messages
    assert line.startswith("request id=r1 kind=http method=GET path=/api/models "
                           "route=/api/models status=200 client=127.0.0.1:9 duration_ms=")
    odd = RequestRecord("r2", "GET", '/a b"c', "")
    odd.finish(404, "rejected: forbidden")
    assert 'path="/a b\\"c"' in _logfmt(record_fields(odd))


# --- the real server ---


def test_metrics_page_has_every_family(port: int) -> None:
    samples = scrape(port)
    names = {name for name, _ in samples}
    for wanted in ("shimmy_models_loaded", "shimmy_slots_active", "shimmy_slots_total",
                   "shimmy_queue_depth", "shimmy_model_load_seconds", "shimmy_scheduler_up",
                   "shimmy_connections_open", "shimmy_requests_in_flight", "shimmy_slots_free",
                   "shimmy_generation_tokens_per_second",
                   "process_resident_memory_bytes", "process_open_fds", "process_threads"):
        assert wanted in names, wanted
    assert value(samples, "shimmy_models_loaded") == 1
    assert value(samples, "shimmy_slots_total", model=MODEL) == 4
    assert value(samples, "shimmy_slots_free", model=MODEL) \
        == 4 - value(samples, "shimmy_slots_active", model=MODEL)
    assert value(samples, "shimmy_scheduler_up", model=MODEL) == 1
    assert value(samples, "shimmy_model_load_seconds", model=MODEL) > 0


def test_a_generation_moves_the_counters(port: int) -> None:
    before = scrape(port)
    # long enough (several 64-token chunks) that the repeat reuses the cached prefix
    prompt = "The history of the moon and the tides, told slowly. " * 26
    exact = {"ignore_eos": True}  # every generation runs to max_tokens
    for _ in range(2):
        status, body = request_json(port, "POST", "/api/generate",
                                    {"prompt": prompt, "max_tokens": 8, "temperature": 0, **exact})
        assert status == 200, body
    status, body = request_json(port, "POST", "/v1/completions",
                                {"model": MODEL, "prompt": "Hi", "max_tokens": 3, **exact})
    assert status == 200
    list(sse_events(port, "/api/generate",
                    {"prompt": "Hi", "max_tokens": 4, "stream": True, **exact}))
    request(port, "GET", "/nope")
    after = scrape(port)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("shimmy_requests_total", method="POST", route="/api/generate", status="200") == 3
    assert grew("shimmy_requests_total", method="POST", route="/v1/completions",
                status="200") == 1
    assert grew("shimmy_requests_total", method="GET", route="unmatched", status="404") == 1
    assert grew("shimmy_generated_tokens_total", model=MODEL) == 8 + 8 + 3 + 4
    assert grew("shimmy_prompt_tokens_total", model=MODEL) > 2 * 256
    assert grew("shimmy_prompt_cache_hit_tokens_total", model=MODEL) >= 256
    assert grew("shimmy_prompt_cache_hits_total", model=MODEL) >= 1
    assert grew("shimmy_prompt_cache_lookups_total", model=MODEL) == 4
    # those 23 tokens came out within the last few seconds: the 10 s average shows them
    assert value(after, "shimmy_generation_tokens_per_second", model=MODEL) > 0
    assert grew("shimmy_time_to_first_token_seconds_count", model=MODEL) == 4
    assert grew("shimmy_tokens_per_second_count", model=MODEL) == 4
    assert grew("shimmy_generations_total", model=MODEL, outcome="length") == 4
    assert value(after, "shimmy_queue_depth", model=MODEL) == 0


@pytest.mark.exact_rows
def test_guesses_ahead_are_counted(port: int) -> None:
    before = scrape(port)
    # the model answers this by repeating its pattern, which a lone request guesses
    prompt = ("Write a short story about a robot who learns to paint.\n\n"
              "Write a short story about a robot who learns to sing.\n\n")
    status, body = request_json(port, "POST", "/api/generate",
                                {"prompt": prompt, "max_tokens": 48, "temperature": 0})
    assert status == 200, body
    after = scrape(port)
    drafted, accepted = (value(after, name, model=MODEL) - value(before, name, model=MODEL)
                         for name in ("shimmy_draft_tokens_total", "shimmy_draft_accepted_total"))
    assert drafted >= accepted > 0


def test_websocket_messages_are_counted(port: int) -> None:
    before = metric(port, "shimmy_websocket_messages_total", route="/ws/generate")
    client = WsClient(port, "/ws/generate")
    for _ in range(2):
        client.send(TextMessage(data=json.dumps({"prompt": "Hi", "max_tokens": 2})))
        while "done" not in json.loads(client.receive_text()):
            pass
    client.close()
    assert wait_until(lambda: metric(port, "shimmy_websocket_messages_total",
                                     route="/ws/generate") == before + 2)


# --- the request log ---


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[ShimmyProcess]:
    write_spelling_model(tmp_path / "models" / "speller.gguf", "Logit!")
    process = ShimmyProcess(["--model-dirs", str(tmp_path / "models"), "--threads", "1",
                             "--ctx", "256", "--log-format", "json", "--log-level", "info"],
                            isolated_env(tmp_path), tmp_path)
    yield process
    if process.proc.poll() is None:
        process.stop()


def test_one_json_line_per_request(logged: ShimmyProcess) -> None:
    port, process = logged.port, logged
    status, headers, _ = request(port, "POST", "/api/generate",
                                 {"prompt": "", "max_tokens": 20, "temperature": 0})
    assert status == 200
    request_id = headers["x-request-id"]
    request(port, "GET", "/api/health")
    client = WsClient(port, "/ws/generate")
    client.send(TextMessage(data=json.dumps({"prompt": "", "max_tokens": 3})))
    while "done" not in json.loads(client.receive_text()):
        pass
    client.close()
    output = process.stop()
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    requests = [line for line in lines if line.get("event") == "request"]
    (generate,) = [line for line in requests if line["id"] == request_id]
    assert generate["route"] == "/api/generate" and generate["status"] == 200
    assert generate["model"] == "speller" and generate["level"] == "info"
    assert generate["prompt_tokens"] == 1
    assert generate["completion_tokens"] == len("Logit!") + 1  # and the end token
    assert generate["ttft_ms"] >= 0 and generate["duration_ms"] > 0
    assert generate["outcome"] == "stop" and "ts" in generate
    assert any(line["route"] == "/api/health" for line in requests)
    (message,) = [line for line in requests if line["kind"] == "websocket"]
    assert message["route"] == "/ws/generate" and message["completion_tokens"] == 3
    assert "prompt" not in json.dumps(requests).replace("prompt_tokens", "")  # no prompt text
