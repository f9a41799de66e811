"""Faults injected into the real engine (``BatchEngine.inject_decode_failures``) and the
request/slot life around them: a failed decode fails only its step's requests and leaves
slots whose records match their cells; admission failures fail one request; the queue
lock is held only to push and pop; cancelled queued requests leave at once."""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path
from typing import Any

import pytest
from clients import request_json
from conftest import ShimmyProcess, isolated_env

from shimmy.engine.lifecycle import RequestState, StepFailed
from shimmy.engine.prompt_cache import PromptCache
from shimmy.engine.scheduler import Generation, GenerationError, Sampling, Scheduler

GREEDY = {"temperature": 0.0, "seed": 1}
WORDS = ["river", "mountain", "ocean", "forest", "desert", "city", "village", "garden"]


@pytest.fixture(scope="module")
def model(model_path: Path) -> Any:
    from shimmy.engine import library

    return library.load().Model(str(model_path), 0, True, [])


def new_engine(model: Any, n_slots: int = 2) -> Any:
    from shimmy.engine import library

    engine = library.load().BatchEngine(model, 512, n_slots, 2, 64, "bf16", 3, True)
    engine.warm_up()
    return engine


def words(model: Any, seed: int, n_words: int) -> list[int]:
    rng = random.Random(seed)
    return model.tokenize(" ".join(rng.choice(WORDS) for _ in range(n_words)), True, False)


def run(engine: Any, slot: int, prompt: list[int], reuse: bool = True,
        max_tokens: int = 12) -> str:
    engine.start(slot, prompt, GREEDY, [], max_tokens, True, -1, reuse)
    text = []
    while not engine.is_idle(slot):
        text.extend(piece for _slot, piece, *_ in engine.step())
    return "".join(text)


# --- the engine alone ---


def test_a_failed_decode_clears_its_slots_and_prefix_sharing_requests_stay_right(
        model: Any) -> None:
    engine = new_engine(model)
    prompt = words(model, 1, 70)
    longer = prompt + words(model, 2, 20)[1:]
    other = words(model, 3, 30)
    expected = run(engine, 0, longer, reuse=False)  # cold; slot 0 keeps its cells
    expected_other = run(engine, 1, other, reuse=False)
    other_reuse = engine.reusable(1, other)  # to the token, or whole chunks (the profile)
    engine.start(0, prompt, GREEDY, [], 40, True, -1)  # reuses slot 0's cells
    for _ in range(3):  # the rest of its prompt is read, a few tokens come out
        engine.step()
    engine.inject_decode_failures(1)
    with pytest.raises(StepFailed) as failure:
        engine.step()
    assert failure.value.slots == [0]
    assert engine.slot_state(0) == "idle" and engine.cached(0) == []
    assert engine.choose_slot(longer) == 0
    assert run(engine, 0, longer) == expected  # read again, not from cells it lost
    assert engine.reusable(1, other) == other_reuse
    assert run(engine, 1, other) == expected_other  # slot 1's cells were untouched


@pytest.mark.parametrize("steps", [3, "chunk", "prefill"])
def test_a_next_turn_after_a_failed_decode_gets_the_cold_text(model: Any, steps: Any) -> None:
    """A later request that repeats all the failed one had (its prompt and the tokens it
    generated, as a chat's next turn does) gets the text a cold read gives. ``chunk``: the
    failed step's token ends a 64-token chunk, which reuse in whole chunks would take;
    ``prefill``: the failed step reads the prompt's second chunk (before the engine
    cleared slots on a failure, the repeated prompt failed inside llama.cpp)."""
    engine = new_engine(model)
    prompt = words(model, 1, 150 if steps == "prefill" else 70)
    steps = 1 if steps == "prefill" else steps
    engine.start(0, prompt, GREEDY, [], 100, True, 0, False)
    generated: list[int] = []
    done = 0
    while (done < steps) if steps != "chunk" else (len(prompt) + len(generated) != 128):
        for event in engine.step():
            generated.extend(entry[0] for entry in event[4] or ())
        done += 1
        assert done < 100
    engine.inject_decode_failures(1)
    with pytest.raises(StepFailed):
        engine.step()
    follow = prompt + generated + words(model, 2, 20)[1:]
    expected = run(engine, 1, follow, reuse=False)  # cold, on the other slot
    assert run(engine, 0, follow) == expected


def test_a_prompt_asked_again_after_a_failed_chunk_read_is_answered(
        model_path: Path, tmp_path: Path) -> None:
    """Served: the injected failure hits the second 64-token chunk of a prompt's read;
    the same prompt asked again is answered, the same way each time."""
    prompt = " ".join(random.Random(1).choice(WORDS) for _ in range(150))
    env = isolated_env(tmp_path, SHIMMY_TEST_FAIL_DECODE="2")
    server = ShimmyProcess(["--model-path", str(model_path), "--parallel", "1",
                            "--deterministic"], env, tmp_path)
    body = {"prompt": prompt, "max_tokens": 8, "temperature": 0}
    try:
        first = request_json(server.port, "POST", "/api/generate", body)
        second = request_json(server.port, "POST", "/api/generate", body)
        third = request_json(server.port, "POST", "/api/generate", body)
    finally:
        out = server.stop()
    assert first[0] == 500 and "llama_decode failed" in str(first[1]), first
    assert second[0] == 200, second
    assert third[0] == 200, third
    assert second[1]["choices"][0]["text"] == third[1]["choices"][0]["text"]
    assert "decode failed" in out


def test_the_injected_failures_come_every_n_passes_and_then_stop(model: Any) -> None:
    engine = new_engine(model, 1)
    engine.inject_decode_failures(2, 3, 2)
    engine.start(0, words(model, 3, 5), GREEDY, [], 30, True, -1)
    outcomes = []
    for _ in range(8):
        if engine.is_idle(0):
            engine.start(0, words(model, 3, 5), GREEDY, [], 30, True, -1)
        try:
            engine.step()
            outcomes.append("ok")
        except StepFailed:
            outcomes.append("failed")
    assert outcomes == ["ok", "failed", "ok", "ok", "failed", "ok", "ok", "ok"]


# --- the scheduler over the real engine ---


class Spy:
    """The real engine, watched: whether the scheduler's lock was free while it ran
    set-up work, which calls it got, and an optional fault in ``reusable``."""

    WATCHED = ("choose_slot", "start", "copy_cells", "restore_cells", "save_cells",
               "cells_size", "reusable")

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.scheduler: Scheduler | None = None
        self.calls: list[str] = []
        self.lock_held: list[str] = []
        self.fail_reusable = False

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.engine, name)
        if name not in self.WATCHED:
            return target

        def watched(*args: Any) -> Any:
            self.calls.append(name)
            if self.scheduler is not None and not self._lock_free():
                self.lock_held.append(name)
            if name == "reusable" and self.fail_reusable:
                self.fail_reusable = False
                raise RuntimeError("a fault in admission")
            return target(*args)

        return watched

    def _lock_free(self) -> bool:
        got: list[bool] = []

        def probe() -> None:
            lock = self.scheduler._wake
            got.append(lock.acquire(timeout=1.0))
            if got[0]:
                lock.release()

        thread = threading.Thread(target=probe)
        thread.start()
        thread.join()
        return got[0]


def generation(prompt: list[int], max_tokens: int = 12) -> Generation:
    return Generation(prompt, max_tokens, Sampling(temperature=0.0, seed=1), [], True)


def scheduled(engine: Any, cache: PromptCache | None = None) -> tuple[Scheduler, Spy]:
    """A scheduler over the spied engine; with a cache it swaps cells (``_swap_cells``)
    even where this machine's profile would not, so that admission runs its whole path
    (the tests then ask for no copy, which only exact rows allow)."""
    spy = Spy(engine)
    scheduler = Scheduler(spy, "spied", cache, copies_cells=cache is not None)
    spy.scheduler = scheduler
    return scheduler, spy


async def text_of(item: Generation, timeout: float = 60.0) -> str:
    return await asyncio.wait_for(item.text(), timeout)


def test_a_failed_decode_fails_its_step_only_and_queued_requests_go_on(model: Any) -> None:
    engine = new_engine(model, 1)
    prompt = words(model, 4, 40)
    expected = run(engine, 0, prompt, reuse=False)

    async def scenario() -> None:
        scheduler, _ = scheduled(engine)
        try:
            running, waiting = generation(prompt, 200), generation(prompt)
            scheduler.submit(running, waiting)
            pieces = running.pieces()
            await asyncio.wait_for(anext(pieces), 30)  # it generates; the other waits
            assert waiting.state is RequestState.QUEUED
            engine.inject_decode_failures(2)  # 2: the thread may be mid-pass now
            with pytest.raises(GenerationError, match="llama_decode failed"):
                async for _ in pieces:
                    pass
            assert running.state is RequestState.FAILED
            assert await text_of(waiting) == expected
            assert await text_of(submitted(scheduler, prompt)) == expected
            assert scheduler.alive and scheduler.n_active == 0 and scheduler.n_queued == 0
        finally:
            scheduler.stop()

    asyncio.run(scenario())


def submitted(scheduler: Scheduler, prompt: list[int]) -> Generation:
    item = generation(prompt)
    scheduler.submit(item)
    return item


def test_admission_runs_outside_the_lock_and_a_fault_in_it_fails_one_request(
        model: Any) -> None:
    engine = new_engine(model, 2)
    prompt = words(model, 5, 60)
    expected = run(engine, 0, prompt, reuse=False)
    engine.forget(0)  # no slot holds cells to copy from

    async def scenario() -> None:
        scheduler, spy = scheduled(engine, PromptCache(1 << 30))
        try:
            spy.fail_reusable = True  # inside _swap_cells
            doomed = submitted(scheduler, prompt)
            with pytest.raises(GenerationError, match="a fault in admission"):
                await text_of(doomed)
            assert doomed.state is RequestState.FAILED
            assert await text_of(submitted(scheduler, prompt)) == expected
            assert await text_of(submitted(scheduler, words(model, 6, 60)))  # saves cells
            assert scheduler.alive and scheduler.failed is None
            assert {"start", "reusable", "save_cells"} <= set(spy.calls)
            assert spy.lock_held == []
        finally:
            scheduler.stop()

    asyncio.run(scenario())


def test_cells_too_big_for_the_prompt_cache_are_not_serialised(model: Any) -> None:
    engine = new_engine(model, 1)

    async def scenario() -> None:
        cache = PromptCache(1000)  # far below one slot's cells
        scheduler, spy = scheduled(engine, cache)
        try:
            await text_of(submitted(scheduler, words(model, 7, 40)))
            await text_of(submitted(scheduler, words(model, 8, 40)))
            assert "cells_size" in spy.calls
            assert "save_cells" not in spy.calls and len(cache) == 0
        finally:
            scheduler.stop()

    asyncio.run(scenario())


def test_a_cancelled_queued_request_leaves_the_queue_at_once(model: Any) -> None:
    engine = new_engine(model, 1)

    async def scenario() -> None:
        scheduler, _ = scheduled(engine)
        try:
            running, waiting = generation(words(model, 9, 10), 200), generation([1, 2, 3])
            scheduler.submit(running, waiting)
            while running.state is RequestState.QUEUED:
                await asyncio.sleep(0.01)
            assert scheduler.n_queued == 1
            waiting.cancel()
            assert scheduler.n_queued == 0 and waiting.state is RequestState.CANCELLED
            assert await text_of(waiting, 1.0) == ""  # its reader is woken, not left waiting
            running.cancel()
            await text_of(running, 10.0)
            assert await text_of(submitted(scheduler, words(model, 9, 10)))
            assert scheduler.n_active == 0
        finally:
            scheduler.stop()

    asyncio.run(scenario())
