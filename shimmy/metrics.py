"""Counters, gauges and histograms in Prometheus' text format, and what the server feeds them.

Everything is updated on the event loop's thread (the server reports each finished
request there), so no locks. Live values (slots, queue, models, process) are read when
``/metrics`` is scraped (``shimmy/api/metrics.py``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from shimmy.logs import RequestRecord, decode_rate, generation_outcome, time_to_first_token

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Labels = tuple[str, ...]

TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RATE_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


class Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:
        raise NotImplementedError

    def _check(self, labels: Labels) -> Labels:
        if len(labels) != len(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {labels}")
        return labels


class Counter(Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, label_names)
        self.values: dict[Labels, float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        key = self._check(labels)
        self.values[key] = self.values.get(key, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self.values.get(labels, 0.0)

    def render(self) -> list[str]:
        if not self.values and not self.label_names:
            return [*self.header(), f"{self.name} 0"]
        return [*self.header(), *(sample(self.name, self.label_names, key, value)
                                  for key, value in sorted(self.values.items()))]


class Gauge(Counter):
    kind = "gauge"

    def set(self, *labels: str, value: float) -> None:
        self.values[self._check(labels)] = value


class Histogram(Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = (),
                 buckets: Sequence[float] = DURATION_BUCKETS) -> None:
        super().__init__(name, help_text, label_names)
        self.buckets = tuple(sorted(buckets))
        self.counts: dict[Labels, list[int]] = {}  # per bucket, not cumulative; last is +Inf
        self.sums: dict[Labels, float] = {}

    def observe(self, value: float, *labels: str) -> None:
        key = self._check(labels)
        counts = self.counts.setdefault(key, [0] * (len(self.buckets) + 1))
        index = next((i for i, bound in enumerate(self.buckets) if value <= bound),
                     len(self.buckets))
        counts[index] += 1
        self.sums[key] = self.sums.get(key, 0.0) + value

    def count(self, *labels: str) -> int:
        return sum(self.counts.get(labels, ()))

    def render(self) -> list[str]:
        lines = self.header()
        names = (*self.label_names, "le")
        for key, counts in sorted(self.counts.items()):
            running = 0
            for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
                running += count
                lines.append(sample(f"{self.name}_bucket", names, (*key, _number(bound)),
                                    running))
            lines.append(sample(f"{self.name}_sum", self.label_names, key, self.sums[key]))
            lines.append(sample(f"{self.name}_count", self.label_names, key, running))
        return lines


def sample(name: str, label_names: Sequence[str], labels: Sequence[str], value: float) -> str:
    if label_names:
        pairs = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(label_names, labels, strict=True))
        name = f"{name}{{{pairs}}}"
    return f"{name} {_number(value)}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def render(metrics: Iterable[Metric]) -> str:
    return "\n".join(line for metric in metrics for line in metric.render()) + "\n"


class Metrics:
    """The server's own counters; one instance per process (``METRICS``)."""

    def __init__(self) -> None:
        self.requests = Counter("shimmy_requests_total",
                                "HTTP requests answered, by method, route and status",
                                ("method", "route", "status"))
        self.request_seconds = Histogram("shimmy_request_duration_seconds",
                                         "Time from a request's head to its last byte",
                                         ("route",))
        self.websocket_messages = Counter("shimmy_websocket_messages_total",
                                          "Requests received as WebSocket messages", ("route",))
        self.rejected = Counter("shimmy_requests_rejected_total",
                                "Requests refused before a handler ran, by reason", ("reason",))
        self.in_flight = Gauge("shimmy_requests_in_flight", "Requests being handled now")
        self.connections = Gauge("shimmy_connections_open", "Open client connections")
        self.generations = Counter("shimmy_generations_total",
                                   "Generations by how they ended (stop, length, error, "
                                   "cancelled)", ("model", "outcome"))
        self.prompt_tokens = Counter("shimmy_prompt_tokens_total",
                                     "Prompt tokens of generations", ("model",))
        self.generated_tokens = Counter("shimmy_generated_tokens_total",
                                        "Tokens generated", ("model",))
        self.cache_hit_tokens = Counter("shimmy_prompt_cache_hit_tokens_total",
                                        "Prompt tokens reused from a slot's cache instead of "
                                        "being read again", ("model",))
        self.cache_hits = Counter("shimmy_prompt_cache_hits_total",
                                  "Generations that reused cached prompt tokens", ("model",))
        self.cache_lookups = Counter("shimmy_prompt_cache_lookups_total",
                                     "Generations that reached a slot, each looking for its "
                                     "prompt's start in the caches (hits / lookups: the hit "
                                     "ratio)", ("model",))
        self.ttft = Histogram("shimmy_time_to_first_token_seconds",
                              "Time from queueing a generation to its first token",
                              ("model",), TTFT_BUCKETS)
        self.tokens_per_second = Histogram("shimmy_tokens_per_second",
                                           "Decode speed of each generation after its first "
                                           "token", ("model",), RATE_BUCKETS)

    def all(self) -> list[Metric]:
        return [value for value in vars(self).values() if isinstance(value, Metric)]

    # --- what the HTTP server reports ---

    def request_started(self, record: RequestRecord) -> None:
        self.in_flight.inc(amount=1)

    def request_finished(self, record: RequestRecord) -> None:
        self.in_flight.inc(amount=-1)
        if record.kind == "websocket":
            self.websocket_messages.inc(record.route or "unmatched")
        else:
            method = record.method if record.method in KNOWN_METHODS else "other"
            route = record.route or "unmatched"
            self.requests.inc(method, route, str(record.status))
            self.request_seconds.observe(record.duration, route)
            if record.note.startswith("rejected: "):
                self.rejected.inc(record.note.removeprefix("rejected: "))
        for generation in record.generations:
            self.observe_generation(record.model or "unknown", generation)

    def rejected(self, reason: str) -> None:
        self.rejected.inc(reason)

    def connections_changed(self, open_connections: int) -> None:
        self.connections.set(value=open_connections)

    def observe_generation(self, model: str, generation: object) -> None:
        self.generations.inc(model, generation_outcome(generation))
        self.prompt_tokens.inc(model, amount=generation.prompt_tokens)
        self.generated_tokens.inc(model, amount=generation.completion_tokens)
        if generation.cached_tokens or getattr(generation, "first_piece_at", None) is not None:
            self.cache_lookups.inc(model)
        if generation.cached_tokens:
            self.cache_hits.inc(model)
            self.cache_hit_tokens.inc(model, amount=generation.cached_tokens)
        if (ttft := time_to_first_token(generation)) is not None:
            self.ttft.observe(ttft, model)
        if (rate := decode_rate(generation)) is not None:
            self.tokens_per_second.observe(rate, model)


METRICS = Metrics()


def process_metrics() -> list[Metric]:
    """Resident memory, open file descriptors and OS threads of this process."""
    from shimmy.sysinfo import process_rss_bytes

    rss = Gauge("process_resident_memory_bytes", "Resident memory of the server process")
    rss.set(value=process_rss_bytes())
    found: list[Metric] = [rss]
    if (fds := _count_entries("/proc/self/fd")) is not None:
        gauge = Gauge("process_open_fds", "Open file descriptors of the server process")
        gauge.set(value=fds)
        found.append(gauge)
    if (threads := _count_entries("/proc/self/task")) is not None:
        gauge = Gauge("process_threads", "OS threads of the server process (llama.cpp's too)")
        gauge.set(value=threads)
        found.append(gauge)
    return found


def _count_entries(folder: str) -> int | None:
    try:
        return len(os.listdir(Path(folder)))
    except OSError:
        return None
