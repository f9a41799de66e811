"""``GET /metrics``: the server's counters plus live model, slot and process gauges."""

from __future__ import annotations

from dataclasses import dataclass

from shimmy.api.state import AppState
from shimmy.engine.loaded import LoadedModel
from shimmy.engine.scheduler import RATE_WINDOW
from shimmy.http.router import Router
from shimmy.http.types import Request, Response
from shimmy.metrics import (
    CONTENT_TYPE,
    METRICS,
    Counter,
    Gauge,
    Metric,
    Metrics,
    process_metrics,
    render,
)


def register(router: Router, state: AppState, metrics: Metrics = METRICS) -> None:
    async def scrape(request: Request) -> Response:
        text = render([*metrics.all(), *model_metrics(state), *process_metrics()])
        return Response(200, text.encode(), CONTENT_TYPE)

    router.add("GET", "/metrics", scrape)


def model_metrics(state: AppState) -> list[Metric]:
    loaded = state.pool.loaded
    models = Gauge("shimmy_models_loaded", "Models in memory")
    models.set(value=len(loaded))
    load_seconds = Gauge("shimmy_model_load_seconds", "How long each loaded model took to load",
                         ("model",))
    active = Gauge("shimmy_slots_active", "Slots generating or reading a prompt (busy)",
                   ("model",))
    free = Gauge("shimmy_slots_free", "Slots free for the next queued generation", ("model",))
    total = Gauge("shimmy_slots_total", "Slots of each loaded model", ("model",))
    rate = Gauge("shimmy_generation_tokens_per_second",
                 f"Tokens generated per second, averaged over the last {RATE_WINDOW:g} s",
                 ("model",))
    queued = Gauge("shimmy_queue_depth", "Generations waiting for a free slot", ("model",))
    up = Gauge("shimmy_scheduler_up", "1 while a model's scheduler thread runs", ("model",))
    drafted = Counter("shimmy_draft_tokens_total",
                      "Tokens guessed ahead (--draft) and decoded to be checked", ("model",))
    accepted = Counter("shimmy_draft_accepted_total",
                       "Guessed tokens that held, each saving a decode step", ("model",))
    profile = Gauge("shimmy_engine_profile", "1 per loaded model, its engine profile in the "
                    "labels (decided at load)", ("model", "profile", "exact_rows", "output_head"))
    rows = Gauge("shimmy_engine_rows_per_pass", "Generating slots per llama_decode at most",
                 ("model",))
    draft = Gauge("shimmy_engine_draft_max", "Tokens a lone request guesses ahead per step",
                  ("model",))
    for name, model in sorted(loaded.items()):
        load_seconds.set(name, value=getattr(model, "load_seconds", 0.0))
        if (measured := getattr(model, "profile", None)) is not None:
            profile.set(name, measured.name, str(measured.exact_rows).lower(),
                        measured.output_head, value=1)
            rows.set(name, value=measured.rows_per_pass)
            draft.set(name, value=measured.draft)
        _scheduler_gauges(name, model, SlotGauges(active, free, total, queued, up, rate))
        if model.engine is not None:  # read across threads: a scrape may lag a step
            drafted.inc(name, amount=model.engine.n_drafted)
            accepted.inc(name, amount=model.engine.n_accepted)
    return [models, load_seconds, active, free, total, queued, up, rate, drafted, accepted,
            profile, rows, draft]


@dataclass(frozen=True, slots=True)
class SlotGauges:
    active: Gauge
    free: Gauge
    total: Gauge
    queued: Gauge
    up: Gauge
    rate: Gauge


def _scheduler_gauges(name: str, model: LoadedModel, gauges: SlotGauges) -> None:
    scheduler = model.scheduler
    if scheduler is None or model.engine is None:
        return  # an embedding model: no slots
    busy, slots = scheduler.n_active, model.engine.n_slots
    gauges.active.set(name, value=busy)
    gauges.free.set(name, value=slots - busy)
    gauges.total.set(name, value=slots)
    gauges.queued.set(name, value=scheduler.n_queued)
    gauges.up.set(name, value=1 if scheduler.alive else 0)
    gauges.rate.set(name, value=round(scheduler.token_rate.rate(), 3))
