"""Requests that share a long prefix (agents with one system prompt) read it once.

A slot's cells are copied into another slot whose prompt starts the same way, out of a
sliding-window ring too (the embedded Gemma caches those layers at their window in the
fast profile) where the copy still holds the window the rest of the prompt attends to.
Requests that arrive together wait for the first one's read to reach the end of what
they share, then start from a copy of its cells (``Scheduler._read_to_share``).
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from clients import request_json
from conftest import ShimmyProcess, isolated_env

GREEDY = {"temperature": 0.0, "seed": 0}
RULES = " ".join(f"Rule {i}: keep file {i * 7 % 13} tidy and run test {i * 3 % 11}."
                 for i in range(40))  # about 600 tokens: past the embedded model's window


@pytest.fixture(scope="module")
def model(model_path: Path) -> Any:
    from shimmy.engine import library

    return library.load().Model(str(model_path), 0, True, [])


def fast_engine(model: Any, slots: int) -> Any:
    from shimmy.engine import library

    engine = library.load().BatchEngine(model, 2048, slots, 2, 64, "f16", 0, True, True,
                                        False, 256)
    engine.warm_up()
    return engine


def generate(engine: Any, slot: int, tokens: list[int], max_tokens: int,
             reuse: bool = True) -> tuple[int, str]:
    reused = engine.start(slot, tokens, GREEDY, [], max_tokens, True, -1, reuse)
    text = []
    while not engine.is_idle(slot):
        text.extend(event[1] for event in engine.step() if event[0] == slot)
    return reused, "".join(text)


def tasks(model: Any, count: int) -> list[list[int]]:
    rules = model.tokenize(RULES, True, False)
    return [rules + model.tokenize(f" Task {k}: fix bug {k * 17} in module {k}.", False,
                                   False) for k in range(count)]


def test_a_window_rings_copy_serves_as_far_as_its_window_reaches(model: Any) -> None:
    engine = fast_engine(model, 3)
    assert engine.swa_window and engine.copies_cells and not engine.caches_cells
    first, second = tasks(model, 2)
    shared = 576  # whole chunks of what the two prompts share, past the window
    assert len(first) > shared + 1
    # a slot that read exactly the shared part: its ring holds what the rest attends to
    generate(engine, 0, first[:shared], 1, reuse=False)
    assert engine.donates(0, second) == shared
    assert engine.copy_cells(0, 1)
    reused, copied = generate(engine, 1, second, 8)
    assert reused == shared
    assert copied == generate(engine, 2, second, 8, reuse=False)[1]
    # one that went 30 tokens past it dropped those cells from its ring: no copy serves
    generate(engine, 0, first[:shared + 30], 1, reuse=False)
    assert engine.reusable(0, second) == shared  # its own ring still has them, for now
    assert engine.donates(0, second) == 0


def scheduler_run(engine: Any, prompts: list[list[int]], copies: bool,
                  cancel_second: bool = False) -> list[tuple[str, int]]:
    """Submit the prompts together; each answer and how many prompt tokens it reused."""
    from shimmy.engine.scheduler import Generation, Sampling, Scheduler

    async def scenario() -> list[tuple[str, int]]:
        scheduler = Scheduler(engine, "shared", None, copies_cells=copies)
        items = [Generation(p, 8, Sampling(temperature=0.0, seed=1), [], True)
                 for p in prompts]
        try:
            scheduler.submit(*items)
            if cancel_second:
                scheduler.cancel(items[1])
                items = [items[0], *items[2:]]
            texts = await asyncio.gather(*(asyncio.wait_for(i.text(), 120) for i in items))
            return [(text, item.cached_tokens) for text, item in zip(texts, items, strict=True)]
        finally:
            scheduler.stop()

    return asyncio.run(scenario())


def test_requests_that_arrive_together_read_their_shared_prefix_once(model: Any) -> None:
    prompts = tasks(model, 3)
    shared = len(model.tokenize(RULES, True, False))
    together = scheduler_run(fast_engine(model, 3), prompts, copies=True)
    each_alone = scheduler_run(fast_engine(model, 3), prompts, copies=False)
    assert together[0][1] == 0 and all(reused == 0 for _, reused in each_alone)
    for _, reused in together[1:]:  # the first one's read, copied in whole chunks
        assert shared - 64 < reused <= shared
    assert [text for text, _ in together] == [text for text, _ in each_alone]


def test_a_request_waiting_for_a_read_can_leave_and_that_read_goes_on(model: Any) -> None:
    prompts = tasks(model, 3)
    done = scheduler_run(fast_engine(model, 3), prompts, copies=True, cancel_second=True)
    assert len(done) == 2 and all(text for text, _ in done)


def test_a_request_queued_behind_one_that_waits_takes_a_free_slot(model: Any) -> None:
    """A request that shares nothing is placed in a free slot at once, while one queued
    before it waits for the first request's read (a slot is kept free for that one)."""
    from shimmy.engine.lifecycle import RequestState
    from shimmy.engine.scheduler import Generation, Sampling, Scheduler

    rules = model.tokenize(f"{RULES} {RULES}", True, False)  # several steps' reading
    first, second = (rules + model.tokenize(f" Task {k}.", False, False) for k in (1, 2))
    other = model.tokenize("A short question about something else.", True, False)
    engine = fast_engine(model, 3)

    async def scenario() -> tuple[RequestState, int]:
        scheduler = Scheduler(engine, "shared", None, copies_cells=True)
        greedy = Sampling(temperature=0.0, seed=1)
        a, b, c = (Generation(tokens, 4, greedy, [], True) for tokens in (first, second, other))
        try:
            scheduler.submit(a, b, c)
            while c.state is RequestState.QUEUED:
                await asyncio.sleep(0.01)
            state_when_c_was_placed = b.state
            await asyncio.gather(*(asyncio.wait_for(g.text(), 120) for g in (a, b, c)))
            return state_when_c_was_placed, b.cached_tokens
        finally:
            scheduler.stop()

    state, cached = asyncio.run(scenario())
    assert state is RequestState.QUEUED
    assert cached > len(rules) - 64


def test_agents_sent_together_to_the_server_read_one_system_prompt(
        model_path: Path, tmp_path: Path) -> None:
    process = ShimmyProcess(["--model-path", str(model_path), "--parallel", "3"],
                            isolated_env(tmp_path), tmp_path)
    try:
        answers: list[Any] = [None] * 3

        def agent(k: int) -> None:
            body = {"model": "default", "max_tokens": 4, "temperature": 0, "messages": [
                {"role": "system", "content": RULES},
                {"role": "user", "content": f"Task {k}: fix bug {k * 17} in module {k}."}]}
            answers[k] = request_json(process.port, "POST", "/v1/chat/completions", body)

        agents = [threading.Thread(target=agent, args=(k,)) for k in range(3)]
        for thread in agents:
            thread.start()
        for thread in agents:
            thread.join(120)
        for status, body in answers:
            assert status == 200, body
        cached = sorted(body["usage"]["prompt_tokens_details"]["cached_tokens"]
                        for _, body in answers)
        prompt_tokens = answers[0][1]["usage"]["prompt_tokens"]
        # whichever came first read the system prompt; the other two copied it
        assert cached[0] == 0 and cached[1] > prompt_tokens // 2, json.dumps(cached)
    finally:
        process.stop()
