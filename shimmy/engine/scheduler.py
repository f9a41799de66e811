"""Continuous batching: one thread per loaded model drives its slots.

Requests queue here; the thread admits them into free slots in arrival order, calls
``BatchEngine.step()`` (one token for every generating slot, the next prompt chunk of
a prefilling one) and hands the pieces to each request's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from shimmy.engine import compute
from shimmy.engine.lifecycle import RequestState, StateError, StepFailed, check_move
from shimmy.engine.prompt_cache import PromptCache

log = logging.getLogger("shimmy.engine")
# tokens a prompt must gain by cells copied in (from the prompt cache or another slot):
# fewer are read faster than a long entry's cells are copied
MIN_RESTORED_TOKENS = 8
RATE_WINDOW = 10.0  # seconds over which ``TokenRate`` averages


class TokenRate:
    """Tokens generated over the last ``window`` seconds, per second.

    One thread adds (the scheduler's, once a step), others read: marks of the running
    total are kept once a second at most, so a reading is exact to about a second.
    """

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self.total = 0
        self._marks: deque[tuple[float, int]] = deque()  # (time, total before that time)

    def add(self, tokens: int, now: float | None = None) -> None:
        if tokens <= 0:
            return
        now = time.monotonic() if now is None else now
        if not self._marks or now - self._marks[-1][0] >= 1.0:
            self._marks.append((now, self.total))
        self.total += tokens
        while self._marks[0][0] < now - self.window:
            self._marks.popleft()

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        marks = [mark for mark in list(self._marks) if mark[0] >= now - self.window]
        return (self.total - marks[0][1]) / self.window if marks else 0.0


@dataclass(slots=True)
class Sampling:
    temperature: float = 0.7
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64
    seed: int = 0
    logit_bias: dict[int, float] = field(default_factory=dict)
    grammar: str | None = None  # GBNF, root rule "root"


class GenerationError(RuntimeError):
    """llama.cpp failed while this request was running."""


class Generation:
    """One request's passage through the scheduler, seen from the asyncio side.

    Iterate it for text pieces (or ``pieces()`` for text with log-probabilities);
    afterwards ``finish_reason`` and the token counts are set. ``cancel()`` (or
    closing the iterator early) takes it out of the queue at once, or frees its slot
    before the scheduler's next step. ``state`` follows ``lifecycle.REQUEST_MOVES``.
    """

    def __init__(self, prompt: list[int], max_tokens: int, sampling: Sampling,
                 stop: list[str], ignore_eos: bool = False, logprobs: int = -1,
                 reuse_cache: bool = True, special: bool = False) -> None:
        self.prompt = prompt
        self.special = special  # control tokens come out as their text
        self.reuse_cache = reuse_cache  # False: read the whole prompt, as a cold start
        self.max_tokens = max_tokens
        self.sampling = sampling
        self.stop = stop
        self.ignore_eos = ignore_eos
        self.logprobs = logprobs
        self.state = RequestState.QUEUED
        self.finish_reason: str | None = None
        self.stop_string: str | None = None  # the stop string that ended it, if one did
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.error: str | None = None
        self.cancelled = False  # asked to stop (the scheduler ends it: CANCELLED)
        self.submitted_at = time.perf_counter()
        self.first_piece_at: float | None = None
        self.finished_at: float | None = None
        self._counted = 0  # tokens the scheduler has counted in its rate (its thread only)
        self._loop = asyncio.get_running_loop()
        self._pieces: asyncio.Queue[tuple[str, list | None] | None] = asyncio.Queue()
        self._scheduler: Scheduler | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None or self.error is not None

    async def pieces(self) -> AsyncIterator[tuple[str, list | None]]:
        """``(text, logprobs)`` as generated; logprobs is None unless asked for."""
        try:
            while (piece := await self._pieces.get()) is not None:
                yield piece
        finally:
            self.cancel()
        if self.error is not None:
            raise GenerationError(self.error)

    async def __aiter__(self) -> AsyncIterator[str]:
        async for text, _ in self.pieces():
            if text:
                yield text

    async def text(self) -> str:
        return "".join([piece async for piece in self])

    def cancel(self) -> None:
        """Stop generating: a queued request leaves the queue now, a placed one frees
        its slot before the scheduler's next step."""
        if not self.cancelled and not self.finished and self._scheduler is not None:
            self.cancelled = True
            self._scheduler.cancel(self)

    def _move(self, new: RequestState) -> None:
        self.state = check_move(self.state, new)

    # called on the event loop's thread, scheduled by the scheduler thread
    def _feed(self, text: str, finish: str | None, completion_tokens: int,
              logprobs: list | None, stop_string: str | None) -> None:
        if self.first_piece_at is None:
            self.first_piece_at = time.perf_counter()
        if text or logprobs:
            self._pieces.put_nowait((text, logprobs))
        if finish is not None:
            self.finish_reason = finish
            self.stop_string = stop_string
            self.completion_tokens = completion_tokens
            self.finished_at = time.perf_counter()
            self._pieces.put_nowait(None)

    def _fail(self, message: str) -> None:
        self.error = message
        self.finished_at = time.perf_counter()
        self._pieces.put_nowait(None)

    def _end(self) -> None:
        """Cancelled: wake whoever still waits for pieces (there are no more)."""
        self.finished_at = time.perf_counter()
        self._pieces.put_nowait(None)


class Scheduler:
    """Owns a ``BatchEngine``; only its thread touches it.

    The lock (``_wake``) guards the queue alone and is held only to push and pop: slot
    choice, cell copies and sampler set-up run outside it, so ``submit()`` and
    ``cancel()`` on the event loop never wait for them.
    """

    def __init__(self, engine: Any, name: str, prompt_cache: PromptCache | None = None,
                 copies_cells: bool | None = None) -> None:
        self.engine = engine
        self.name = name
        self.prompt_cache = prompt_cache
        self.copies_cells = engine.copies_cells if copies_cells is None else copies_cells
        self._queue: deque[Generation] = deque()
        self._slots: list[Generation | None] = [None] * engine.n_slots
        self._held: tuple[int, int] | None = None  # a paused read (slot, tokens), see _hold
        self._wake = threading.Condition()
        self._stopping = False
        self.token_rate = TokenRate()  # generated tokens per second, for /metrics
        self.failed: str | None = None  # why the thread died, if it did
        self._thread = threading.Thread(target=self._run, name=f"scheduler-{name}", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the scheduling thread still runs (False once stopped or dead)."""
        return self._thread.is_alive()

    @property
    def n_active(self) -> int:
        return sum(slot is not None for slot in self._slots)

    @property
    def n_queued(self) -> int:
        return len(self._queue)

    def submit(self, *generations: Generation) -> None:
        """Queue the generations together: all of them, in order, or (raising) none."""
        for generation in generations:
            if generation.state is not RequestState.QUEUED or generation._scheduler:
                raise StateError("a generation is submitted once")
        with self._wake:
            for generation in generations:
                generation._scheduler = self
            self._queue.extend(generations)
            self._wake.notify()

    def cancel(self, generation: Generation) -> None:
        """Take a queued generation out now; a placed one goes before the next step."""
        with self._wake:
            if generation.state is RequestState.QUEUED:
                self._queue.remove(generation)
                generation._move(RequestState.CANCELLED)
                generation._end()
            self._wake.notify()

    def wake(self) -> None:
        with self._wake:
            self._wake.notify()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()

    def _run(self) -> None:
        try:
            self._schedule()
        except BaseException as exc:  # a bug, not a request's failure: those are caught below
            self.failed = f"{type(exc).__name__}: {exc}"
            log.exception("the scheduler of %s died", self.name)
            with contextlib.suppress(Exception):  # nobody may wait forever on a dead thread
                self._fail_all(f"the scheduler failed ({self.failed})")

    def _schedule(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._queue and not self.n_active:
                    self._wake.wait()
                if self._stopping:
                    break
            self._admit()
            self._drop_cancelled()
            if self.n_active:
                self._step()
        self._fail_all("the model was unloaded")

    def _admit(self) -> None:
        """Place queued requests in arrival order while a slot is free. One whose prompt
        starts with what another slot is still reading waits until that read gets there,
        to start from a copy of its cells (``_read_to_share``), and keeps a free slot for
        then; requests queued behind it take the other free slots."""
        hold: tuple[int, int] | None = None
        waiting = 0
        for generation in self._queued():
            free = self.engine.choose_slot(generation.prompt)
            if free < 0 or (waiting and self._n_free() <= waiting):
                break
            wait = self._read_to_share(generation, free)
            if wait is not None and hold in (None, wait):
                hold, waiting = wait, waiting + 1
                continue
            if self._take(generation):
                self._place(generation, free)
        self._hold(hold)

    def _read_to_share(self, generation: Generation, slot: int) -> tuple[int, int] | None:
        """``(reading slot, tokens)``: where another slot's prompt read, once there, gives
        the request in ``slot`` more by a copy than it has; None if nothing does. Agents
        that arrive together with one system prompt then read it once, not each."""
        if not self.copies_cells or not generation.reuse_cache:
            return None
        prompt = generation.prompt
        ahead, reader = max((self.engine.read_ahead(other, prompt), other)
                            for other in range(self.engine.n_slots))
        if ahead < MIN_RESTORED_TOKENS:
            return None
        has = max(self.engine.reusable(slot, prompt), self._stored(prompt)[0])
        return (reader, ahead) if ahead - has >= MIN_RESTORED_TOKENS else None

    def _hold(self, hold: tuple[int, int] | None) -> None:
        """Pause the one read a queued request waits for (``_read_to_share``); let the
        one paused before go on. Set again each time: the slot may hold another request
        since (``start`` clears a pause)."""
        if self._held is not None and self._held != hold:
            self.engine.hold_read(self._held[0], 0)
        if hold is not None:
            self.engine.hold_read(*hold)
        self._held = hold

    def _queued(self) -> list[Generation]:
        with self._wake:
            return list(self._queue)

    def _take(self, generation: Generation) -> bool:
        """Take the request out of the queue (PLACED), unless it was cancelled meanwhile."""
        with self._wake:
            try:
                self._queue.remove(generation)
            except ValueError:
                return False
            generation._move(RequestState.PLACED)
            return True

    def _n_free(self) -> int:
        return sum(generation is None for generation in self._slots)

    def _place(self, generation: Generation, slot: int) -> None:
        """Set the slot up for the request; anything failing here fails that request
        alone, and the slot's cells are dropped in case the failure left them half set."""
        try:
            if self.copies_cells and generation.reuse_cache:
                self._swap_cells(slot, generation.prompt)
            generation.cached_tokens = self.engine.start(
                slot, generation.prompt, dataclasses.asdict(generation.sampling),
                generation.stop, generation.max_tokens, generation.ignore_eos,
                generation.logprobs, generation.reuse_cache, generation.special)
        except Exception as exc:  # e.g. a grammar llama.cpp refuses: this request only
            log.warning("request not placed in slot %d of %s: %s", slot, self.name, exc)
            with contextlib.suppress(Exception):
                self.engine.forget(slot)
            self._end_failed(generation, str(exc))
            return
        generation._move(RequestState.READING)
        self._slots[slot] = generation

    def _swap_cells(self, slot: int, prompt: list[int]) -> None:
        """Before a request takes the idle ``slot``: keep the cells it would lose in the
        prompt cache, and fill the slot with a copy of the prompt's start, from the cache
        or from another slot (busy or not), where that saves more reading."""
        kept = self.engine.reusable(slot, prompt)
        cache = self.prompt_cache
        if cache is not None and self.engine.cached_tokens(slot) > kept:
            held = self.engine.cached(slot)
            # serialising a whole slot only for the cache to drop it would be wasted
            if tuple(held) not in cache and cache.fits(self.engine.cells_size(slot)):
                cache.put(held, self.engine.save_cells(slot), self.engine.marks(slot))
        if len(prompt) - 1 - kept < MIN_RESTORED_TOKENS:
            return  # no copy could save enough: the slot already holds nearly all of it
        shared, donor = self._best_donor(slot, prompt)
        stored, entry = self._stored(prompt)
        if max(shared, stored) - kept < MIN_RESTORED_TOKENS:
            return
        if shared >= stored:
            copied = self.engine.copy_cells(donor, slot)
        else:
            copied = self.engine.restore_cells(slot, entry.cells, list(entry.tokens),
                                               entry.marks)
        if not copied:
            log.warning("llama.cpp refused copied cells for slot %d", slot)

    def _stored(self, prompt: list[int]) -> tuple[int, Any]:
        """The tokens of ``prompt`` that the prompt cache's best entry would save
        reading, and that entry (None if there is none)."""
        found = self.prompt_cache.best(prompt) if self.prompt_cache is not None else None
        if found is None:
            return 0, None
        entry = found[0]
        return self.engine.reusable_copy(list(entry.tokens), entry.marks, prompt), entry

    def _best_donor(self, slot: int, prompt: list[int]) -> tuple[int, int]:
        """The tokens of ``prompt`` that the best other slot's cells would save reading,
        and that slot (-1 if there is no other)."""
        others = (other for other in range(self.engine.n_slots) if other != slot)
        return max(((self.engine.donates(other, prompt), other) for other in others),
                   default=(0, -1))

    def _drop_cancelled(self) -> None:
        for index, generation in enumerate(self._slots):
            if generation is not None and generation.cancelled:
                self.engine.release(index)
                self._slots[index] = None
                generation._move(RequestState.CANCELLED)
                _call_soon(generation._loop, generation._end)
                log.debug("slot %d freed: request cancelled", index)

    def _step(self) -> None:
        try:
            events = compute.run(self.engine.step)
        except StepFailed as exc:  # llama.cpp failed a batch: its requests fail, not others
            log.error("decode failed on %s (slots %s): %s", self.name, exc.slots, exc)
            self._deliver(exc.events)
            for index in exc.slots:
                if (generation := self._slots[index]) is not None:
                    self._slots[index] = None
                    self._end_failed(generation, str(exc))
            return
        except Exception as exc:  # not a failed batch: no telling which slots it broke
            log.exception("a step failed on %s", self.name)
            self._fail_placed(str(exc))
            return
        self._deliver(events)

    def _deliver(self, events: list[tuple]) -> None:
        deliveries: dict[asyncio.AbstractEventLoop, list[tuple]] = {}
        generated = 0
        for index, text, finish, count, logprobs, stop_string in events:
            generation = self._slots[index]
            if generation is None:
                continue
            generated += count - generation._counted
            generation._counted = count
            if generation.state is RequestState.READING:
                generation._move(RequestState.GENERATING)
            if finish is not None:
                self._slots[index] = None
                generation._move(RequestState.FINISHED)
            deliveries.setdefault(generation._loop, []).append(
                (generation, text, finish, count, logprobs, stop_string))
        self.token_rate.add(generated)
        for loop, batch in deliveries.items():
            _call_soon(loop, _deliver, batch)

    def _end_failed(self, generation: Generation, message: str) -> None:
        generation._move(RequestState.FAILED)
        _call_soon(generation._loop, generation._fail, message)

    def _fail_placed(self, message: str) -> None:
        """Fail the requests in slots, whose cells are dropped; queued ones stay."""
        for index, generation in enumerate(self._slots):
            if generation is not None:
                with contextlib.suppress(Exception):
                    self.engine.forget(index)
                self._slots[index] = None
                self._end_failed(generation, message)

    def _fail_all(self, message: str) -> None:
        """Fail every request, queued ones too: the thread is stopping or broken."""
        with self._wake:
            waiting = list(self._queue)
            self._queue.clear()
        self._fail_placed(message)
        for generation in waiting:
            self._end_failed(generation, message)


def _deliver(batch: list[tuple]) -> None:
    for generation, *event in batch:
        generation._feed(*event)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Any, *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # that loop has closed: nobody is listening
        loop.call_soon_threadsafe(callback, *args)
