"""Loaded models by name: each loads on first use, once, off the event loop, and stays
for its keep-alive time after its last request; the least recently used idle models make
room when ``max_models`` or the memory budget would be exceeded.

A model is in use while its scheduler has active or queued generations, while an
embedding runs on it (``hold``), or while a request waits for it to finish loading; its
keep-alive clock starts when it goes idle. Idleness is noticed by one expiry task on the
event loop, which polls only while a model with a finite keep-alive is in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from shimmy.engine.loaded import (
    KV_CACHE_TYPES,
    EngineSettings,
    LoadedModel,
    LoadProgress,
    is_embedding_model,
)
from shimmy.errors import ApiError
from shimmy.http.router import RouteError
from shimmy.models.discovery import ModelEntry
from shimmy.models.gguf import GGUFInfo
from shimmy.models.registry import ModelRegistry
from shimmy.security import RETRY_AFTER_SECONDS
from shimmy.sysinfo import format_bytes

log = logging.getLogger("shimmy.engine")

FOREVER = math.inf
DEFAULT_KEEP_ALIVE = 300.0
DEFAULT_MAX_MODELS = 3
# Go's longest duration (what Ollama's keep_alive -1 becomes): anything longer is forever
MAX_KEEP_ALIVE = (2**63 - 1) / 1e9
IN_USE_POLL_SECONDS = 0.1  # how soon a model that goes idle is noticed

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
                   "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: object) -> float:
    """Seconds from Ollama's ``keep_alive``: a number of seconds or a Go duration ("5m",
    "1h30m", "300ms"); a bare number in a string counts as seconds. Negative (or longer
    than Go can hold) is ``FOREVER``. ``ValueError`` says what is wrong."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("expected a duration such as \"5m\", \"30s\" or \"1h\", or a "
                         "number of seconds")
    seconds = _duration_seconds(value.strip()) if isinstance(value, str) else float(value)
    if math.isnan(seconds):
        raise ValueError("not a number")
    return FOREVER if seconds < 0 or seconds >= MAX_KEEP_ALIVE else seconds


def _duration_seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    sign, body = (-1.0, text[1:]) if text.startswith("-") else (1.0, text.removeprefix("+"))
    parts = _DURATION_PART.findall(body)
    if not body or "".join(number + unit for number, unit in parts) != body:
        raise ValueError(f"'{text}' is not a duration; use e.g. \"30s\", \"5m\", \"1h\" or "
                         "a number of seconds")
    return sign * sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)


def describe_keep_alive(seconds: float) -> str:
    return "forever" if seconds == FOREVER else f"{seconds:g} s"


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """How long idle models stay and how many may be in memory; the defaults keep every
    model until the pool closes (what ``shimmy generate`` wants)."""

    keep_alive: float = FOREVER  # seconds after its last use; 0: unload as soon as idle
    max_models: int = 0  # 0: no limit
    memory_budget: int = 0  # bytes for weights plus KV caches; 0: no budget


def memory_estimate(entry: ModelEntry, settings: EngineSettings) -> int:
    """Bytes a model needs once loaded: its files plus the KV cache of its slots."""
    return _files_size(entry) + kv_cache_bytes(entry.info, settings)


def _files_size(entry: ModelEntry) -> int:
    total = 0
    for shard in entry.shards or [entry.path]:
        try:
            total += shard.stat().st_size
        except OSError:
            return entry.size
    return total


def kv_cache_bytes(info: GGUFInfo, settings: EngineSettings) -> int:
    """The KV cache ``LoadedModel`` allocates: every slot's stream holds the whole context,
    in every layer. 0 when the GGUF does not say enough (recurrent models, say)."""
    meta, arch = info.metadata, info.architecture
    layers = _number(meta.get(f"{arch}.block_count"))
    embd = _number(meta.get(f"{arch}.embedding_length"))
    heads = _number(meta.get(f"{arch}.attention.head_count"))
    if not (layers and embd and heads):
        return 0
    heads_kv = meta.get(f"{arch}.attention.head_count_kv", heads)
    per_layer = heads_kv if isinstance(heads_kv, list) else [heads_kv] * layers
    key_length = _number(meta.get(f"{arch}.attention.key_length")) or embd // heads
    value_length = _number(meta.get(f"{arch}.attention.value_length")) or key_length
    per_token = sum(_number(n) for n in per_layer) * (key_length + value_length)
    ctx = min(settings.ctx, info.context_length) if info.context_length else settings.ctx
    sequences = 1 if is_embedding_model(info) else settings.parallel
    return int(per_token * ctx * sequences * KV_CACHE_TYPES[settings.kv_type])


def _number(value: object) -> int:
    if isinstance(value, list):
        value = max(value, default=0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(slots=True)
class Resident:
    """A loaded model and its keep-alive bookkeeping (times from ``time.monotonic``)."""

    model: LoadedModel
    need: int  # estimated bytes, counted against the memory budget
    keep_alive: float
    last_used: float = field(default_factory=time.monotonic)  # its last request began
    idle_since: float | None = None  # None while in use, or not yet seen idle since
    holds: int = 0  # embeddings running

    @property
    def generating(self) -> int:
        scheduler = self.model.scheduler
        queued = scheduler.n_active + scheduler.n_queued if scheduler is not None else 0
        return queued + self.model.n_preparing

    def expires_in(self, now: float) -> float:
        """Seconds until it expires; from now + keep-alive while in use."""
        since = now if self.idle_since is None else self.idle_since
        return since + self.keep_alive - now


@dataclass(frozen=True, slots=True)
class ModelState:
    """What ``/api/models``, ``/api/ps`` and ``/api/health`` say about one model."""

    state: str  # "loaded", "loading" or "available"
    expires_at: datetime | None = None  # None: never, or not loaded
    progress: float | None = None  # while loading: the share of the weights read


class ModelPool:
    def __init__(self, registry: ModelRegistry, settings: EngineSettings,
                 limits: PoolLimits | None = None) -> None:
        self.registry = registry
        self.settings = settings
        self.limits = limits or PoolLimits()
        self._loaded: dict[str, Resident] = {}
        self._loads: dict[str, asyncio.Task[Resident]] = {}
        self._progress: dict[str, LoadProgress] = {}  # of the loads in progress
        self._waiting: Counter[str] = Counter()  # requests waiting for a load to finish
        self._reserved: dict[str, int] = {}  # bytes of loads in progress
        self._unloads: dict[str, tuple[int, asyncio.Task[None]]] = {}  # bytes, closing task
        self._room = asyncio.Lock()  # one load at a time decides what to evict
        self._changed = asyncio.Event()
        self._expiry: asyncio.Task[None] | None = None

    # --- what the API reports ---

    @property
    def loaded(self) -> dict[str, LoadedModel]:
        return {name: resident.model for name, resident in self._loaded.items()}

    @property
    def loading(self) -> list[str]:
        return list(self._loads)

    def state(self, name: str) -> ModelState:
        if name in self._loads:
            return ModelState("loading", progress=self.load_fraction(name) or 0.0)
        resident = self._loaded.get(name)
        if resident is None:
            return ModelState("available")
        self._notice_idle(resident, time.monotonic())
        return ModelState("loaded", _wall_clock(resident))

    def load_fraction(self, name: str) -> float | None:
        """The share of ``name``'s weights read while it loads; None when no load runs.
        Safe to call from any thread (a progress line's)."""
        progress = self._progress.get(name)
        return progress.fraction if progress is not None else None

    def memory_need(self, entry: ModelEntry) -> int:
        return memory_estimate(entry, self.settings)

    # --- getting a model ---

    async def get(self, name: str | None, keep_alive: float | None = None) -> LoadedModel:
        """The loaded model for a request's ``model`` field (``default`` allowed);
        ``keep_alive`` (seconds) replaces the model's, else the pool's default applies."""
        entry = self.registry.resolve(name)
        keep = self.limits.keep_alive if keep_alive is None else keep_alive
        resident = self._usable(entry.name) or await self._wait_for_load(entry, keep)
        self._use(resident, keep)
        return resident.model

    @contextlib.contextmanager
    def hold(self, model: LoadedModel) -> Iterator[None]:
        """Keep ``model`` loaded while the block runs (an embedding: no scheduler sees it)."""
        resident = self._loaded.get(model.name)
        if resident is None or resident.model is not model:
            yield
            return
        resident.holds += 1
        try:
            yield
        finally:
            resident.holds -= 1
            self._use(resident, resident.keep_alive)

    async def _wait_for_load(self, entry: ModelEntry, keep: float) -> Resident:
        task = self._loads.get(entry.name)
        if task is None:
            progress = self._progress[entry.name] = LoadProgress()
            task = asyncio.create_task(self._load(entry, keep, progress))
            self._loads[entry.name] = task
            task.add_done_callback(lambda done: self._load_finished(entry.name, done))
        self._waiting[entry.name] += 1
        try:
            # shielded: a client that goes away must not cancel a load others wait for,
            # nor leave a model loaded that nobody knows of
            return await asyncio.shield(task)
        finally:
            self._waiting[entry.name] -= 1
            if not self._waiting[entry.name]:
                del self._waiting[entry.name]

    def _load_finished(self, name: str, task: asyncio.Task[Resident]) -> None:
        if self._loads.get(name) is task:
            del self._loads[name]
            self._progress.pop(name, None)
        if not task.cancelled():
            task.exception()  # retrieved: a failed load nobody awaits any more is no bug
        self._changed.set()

    async def _load(self, entry: ModelEntry, keep: float, progress: LoadProgress) -> Resident:
        if (unloading := self._unloads.get(entry.name)) is not None:
            await asyncio.shield(unloading[1])  # the old copy leaves memory first
        need = self.memory_need(entry)
        async with self._room:
            await self._make_room(entry.name, need)
            self._reserved[entry.name] = need
        try:
            model = await asyncio.to_thread(LoadedModel, entry.name, entry.path, self.settings,
                                            list(entry.loras), entry.info, progress)
        except Exception as exc:
            log.error("loading %s failed: %s", entry.name, exc)
            raise _load_failed(entry.name, str(exc)) from None
        finally:
            del self._reserved[entry.name]
        resident = self._loaded[entry.name] = Resident(model, need, keep)
        self._start_expiry()
        return resident

    def _usable(self, name: str) -> Resident | None:
        """The loaded model; one whose scheduler thread died is dropped, to load afresh."""
        resident = self._loaded.get(name)
        scheduler = resident.model.scheduler if resident is not None else None
        if resident is None or scheduler is None or scheduler.alive:
            return resident
        log.error("the scheduler of %s died (%s): reloading the model", name, scheduler.failed)
        del self._loaded[name]
        resident.model.close()
        return None

    def _use(self, resident: Resident, keep: float) -> None:
        resident.keep_alive = keep
        resident.last_used = time.monotonic()
        resident.idle_since = None  # its clock starts again when it is next seen idle
        self._changed.set()

    # --- making room ---

    async def _make_room(self, name: str, need: int) -> None:
        """Unload idle models, least recently used first, until ``need`` more bytes and one
        more model fit; 503 when the models in use alone leave no room."""
        budget = self.limits.memory_budget
        if budget and need > budget:
            raise _load_failed(name, f"it needs about {format_bytes(need)} (weights and KV "
                               f"cache) but the memory budget is {format_bytes(budget)}; "
                               "lower --ctx or --parallel, or raise --memory-budget")
        while True:
            await self._finish_unloads()  # their memory is still taken until they are done
            victims = self._victims(need)
            if victims is None:
                raise self._no_room(name, need)
            if not victims:
                return
            for victim in victims:
                log.info("unloading %s to make room for %s", victim, name)
                self._unload(victim)

    def _victims(self, need: int) -> list[str] | None:
        """Idle models to unload (least recently used first) so that one more model of
        ``need`` bytes fits; None if even unloading every idle one would not do."""
        now = time.monotonic()
        idle = sorted((r for r in self._loaded.values() if not self._notice_idle(r, now)),
                      key=lambda r: r.last_used)
        count, used = self._footprint()
        victims: list[str] = []
        for resident in [None, *idle]:
            if resident is not None:
                victims.append(resident.model.name)
                count, used = count - 1, used - resident.need
            if self._fits(count + 1, used + need):
                return victims
        return None

    def _footprint(self) -> tuple[int, int]:
        """Models in memory or on their way in or out, and their estimated bytes."""
        needs = [r.need for r in self._loaded.values()] + list(self._reserved.values()) \
            + [need for need, _ in self._unloads.values()]
        return len(needs), sum(needs)

    def _fits(self, count: int, used: int) -> bool:
        limits = self.limits
        return (not limits.max_models or count <= limits.max_models) \
            and (not limits.memory_budget or used <= limits.memory_budget)

    def _no_room(self, name: str, need: int) -> ApiError:
        """503: the models in use (or loading) alone leave no room for ``name``."""
        busy = {**self._reserved, **{n: r.need for n, r in self._loaded.items()
                                     if self._in_use(r)}}
        limits, used = self.limits, sum(busy.values())
        limited = []
        if limits.max_models and len(busy) + 1 > limits.max_models:
            limited.append(f"--max-models {limits.max_models}")
        if limits.memory_budget and used + need > limits.memory_budget:
            limited.append(f"the memory budget of {format_bytes(limits.memory_budget)} "
                           f"({format_bytes(used)} in use)")
        names = ", ".join(f"'{n}'" for n in sorted(busy))
        error = ApiError(503, "server_busy", "The server is busy",
                         f"Model '{name}' (about {format_bytes(need)}) cannot be loaded "
                         f"within {' and '.join(limited)} while {names} "
                         f"{'is' if len(busy) == 1 else 'are'} in use; retry later")
        return RouteError(error, [("retry-after", str(RETRY_AFTER_SECONDS))])

    # --- unloading ---

    async def unload(self, name: str) -> bool:
        """Unload ``name`` now if it is idle (after its load, if one runs); a model in use
        goes as soon as it is idle. Whether it is out of memory on return."""
        if (task := self._loads.get(name)) is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(task)
        resident = self._loaded.get(name)
        if resident is None:
            if (unloading := self._unloads.get(name)) is not None:
                await asyncio.shield(unloading[1])
            return True
        resident.keep_alive = 0.0
        if self._in_use(resident):
            self._changed.set()
            return False
        await self._unload(name)
        return True

    def _unload(self, name: str) -> asyncio.Task[None]:
        """Take ``name`` out of the pool and close it in a thread (which joins its
        scheduler); the task is done when its memory is free."""
        resident = self._loaded.pop(name)
        task = asyncio.create_task(asyncio.to_thread(resident.model.close))
        self._unloads[name] = (resident.need, task)

        def finished(_: asyncio.Task[None]) -> None:
            if self._unloads.get(name, (0, None))[1] is task:
                del self._unloads[name]
            if not task.cancelled() and (error := task.exception()) is not None:
                log.error("unloading %s failed: %s", name, error)

        task.add_done_callback(finished)
        return task

    async def _finish_unloads(self) -> None:
        while self._unloads:
            await asyncio.gather(*(asyncio.shield(task) for _, task in self._unloads.values()),
                                 return_exceptions=True)

    # --- keep-alive expiry ---

    def _in_use(self, resident: Resident) -> bool:
        return bool(resident.generating or resident.holds
                    or self._waiting.get(resident.model.name))

    def _notice_idle(self, resident: Resident, now: float) -> bool:
        """Whether ``resident`` is in use; the first time it is seen idle, its clock starts."""
        if self._in_use(resident):
            resident.idle_since = None
            return True
        if resident.idle_since is None:
            resident.idle_since = now
        return False

    def _start_expiry(self) -> None:
        if self._expiry is None or self._expiry.done():
            self._expiry = asyncio.create_task(self._expire_forever(), name="shimmy-keep-alive")

    async def _expire_forever(self) -> None:
        while True:
            self._changed.clear()
            try:
                delay = self._expire()
            except Exception:  # a bug: keep expiring the other models rather than none
                log.exception("keep-alive expiry failed")
                delay = IN_USE_POLL_SECONDS
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), delay)

    def _expire(self) -> float | None:
        """Unload the idle models whose time is up; seconds until the next check is due
        (None: nothing can expire until something changes)."""
        now = time.monotonic()
        delays: list[float] = []
        for name, resident in list(self._loaded.items()):
            if self._notice_idle(resident, now):
                delays.append(IN_USE_POLL_SECONDS)  # to see when it goes idle
            elif resident.keep_alive == FOREVER:
                continue
            elif (left := resident.expires_in(now)) <= 0:
                log.info("unloading %s: idle for %s", name, describe_keep_alive(
                    resident.keep_alive))
                self._unload(name)
            else:
                delays.append(left)
        return min(delays, default=None)

    # --- shutting down ---

    async def aclose(self) -> None:
        """Let loads in progress finish, stop expiry, and unload every model."""
        await asyncio.gather(*self._loads.values(), return_exceptions=True)
        self._stop_expiry()
        await self._finish_unloads()
        await asyncio.to_thread(self._close_models)

    def close(self) -> None:
        """Unload every model now (blocking); call it on the event loop's thread or after
        the loop has stopped."""
        self._stop_expiry()
        self._close_models()

    def _close_models(self) -> None:
        for resident in self._loaded.values():
            resident.model.close()
        self._loaded.clear()

    def _stop_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None


def _wall_clock(resident: Resident) -> datetime | None:
    if resident.keep_alive == FOREVER:
        return None
    left = resident.expires_in(time.monotonic())
    return datetime.now(UTC).astimezone() + timedelta(seconds=max(left, 0.0))


def _load_failed(name: str, why: str) -> ApiError:
    return ApiError(500, "generation_failed", f"Model '{name}' could not be loaded", why)
