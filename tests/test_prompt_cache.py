"""Replaced slots' cells kept in memory (``--prompt-cache``): the cache's bookkeeping,
exact copies through llama.cpp, and a served prompt read from memory after its slot
moved on."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from clients import request_json, sse_events
from conftest import ShimmyProcess, isolated_env

from shimmy.engine.prompt_cache import PromptCache

SAMPLING = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "seed": 5}
WORDS = ["river", "mountain", "ocean", "forest", "desert", "city", "village", "garden"]


def test_best_is_the_longest_shared_prefix_and_counts_as_used() -> None:
    cache = PromptCache(100)
    cache.put([1, 2, 3, 4], b"a" * 10)
    cache.put([1, 2, 9], b"b" * 10)
    entry, shared = cache.best([1, 2, 3, 7])
    assert (entry.tokens, entry.cells, shared) == ((1, 2, 3, 4), b"a" * 10, 3)
    assert cache.best([5, 6]) is None
    cache.put([8], b"c" * 85)  # over the cap: the least recently used entry goes
    assert (1, 2, 9) not in cache and (1, 2, 3, 4) in cache and cache.size == 95


def test_an_entry_replaces_those_it_extends_and_oversized_ones_are_not_kept() -> None:
    cache = PromptCache(100)
    cache.put([1, 2], b"x" * 10)
    cache.put([1, 2, 3], b"y" * 20)
    assert len(cache) == 1 and cache.size == 20
    cache.put([4], b"z" * 101)
    assert (4,) not in cache and cache.size == 20


@pytest.fixture(scope="module")
def model(model_path: Path) -> Any:
    from shimmy.engine import library

    return library.load().Model(str(model_path), 0, True, [])


def prompt(model: Any, seed: int, n_words: int) -> list[int]:
    rng = random.Random(seed)
    return model.tokenize(" ".join(rng.choice(WORDS) for _ in range(n_words)), True, False)


def generate(eng: Any, slot: int, tokens: list[int]) -> tuple[int, list[tuple[int, float]]]:
    """Cached tokens reused, and each generated token with its log-probability."""
    reused = eng.start(slot, tokens, SAMPLING, [], 12, True, 0)
    trace: list[tuple[int, float]] = []
    while not eng.is_idle(slot):
        for _slot, _text, _finish, _n, logprobs, _stop in eng.step():
            trace.extend((entry[0], entry[2]) for entry in logprobs or ())
    return reused, trace


@pytest.mark.exact_rows
def test_restored_cells_serve_a_prompt_as_computed_ones(model: Any) -> None:
    from shimmy.engine import library

    eng = library.load().BatchEngine(model, 512, 2, 2, 64, "bf16", 3, True)
    eng.warm_up()
    tokens = prompt(model, 1, 150)
    _, cold = generate(eng, 0, tokens)
    cells, held = eng.save_cells(0), eng.cached(0)
    assert cells and held[:len(tokens)] == tokens and len(held) == len(tokens) + 11
    assert eng.restore_cells(1, cells, held)
    assert eng.cached(1) == held
    reused, warm = generate(eng, 1, tokens)
    assert reused == len(tokens) - 1
    assert warm == cold


@pytest.mark.exact_rows
def test_a_busy_slots_cells_serve_another_slot_as_computed_ones(model: Any) -> None:
    """A copy of a slot's cells taken while it generates: the prompt it shares with the
    other slot is read from its last token on, and neither text changes."""
    from shimmy.engine import library

    eng = library.load().BatchEngine(model, 512, 3, 2, 64, "bf16", 3, True)
    eng.warm_up()
    tokens = prompt(model, 2, 120)
    _, cold = generate(eng, 2, tokens)
    eng.start(0, tokens, SAMPLING, [], 12, True, 0)
    busy: list[tuple[int, float]] = []
    for _ in range(4):
        for _slot, _text, _finish, _n, logprobs, _stop in eng.step():
            busy.extend((entry[0], entry[2]) for entry in logprobs or ())
    assert not eng.is_idle(0) and len(eng.cached(0)) > len(tokens)
    assert eng.copy_cells(0, 1)
    assert eng.cached(1) == eng.cached(0)
    reused = eng.start(1, tokens, SAMPLING, [], 12, True, 0)
    assert reused == len(tokens) - 1
    copied: list[tuple[int, float]] = []
    while not (eng.is_idle(0) and eng.is_idle(1)):
        for slot, _text, _finish, _n, logprobs, _stop in eng.step():
            (busy if slot == 0 else copied).extend((e[0], e[2]) for e in logprobs or ())
    assert busy == cold
    assert copied == cold


def test_cells_are_not_restored_where_rows_round_otherwise_in_the_invariant_profile(
        model: Any) -> None:
    from shimmy.engine import library

    eng = library.load().BatchEngine(model, 512, 1, 2, 64, "f16", 0, True)
    eng.warm_up()
    assert not eng.exact_rows
    with pytest.raises(library.load().LlamaError, match="round alike"):
        eng.restore_cells(0, b"cells", [1, 2])


def test_the_fast_profiles_copies_carry_how_their_cells_were_computed(model: Any) -> None:
    """Where rows round otherwise, a fast engine's copies keep their marks: a copied
    prompt is reused in the chunks a cold start reads (so it gives the cold text), and a
    copied answer to the token (a chat's next turn on another slot reads only what is
    new)."""
    from shimmy.engine import library

    eng = library.load().BatchEngine(model, 1024, 3, 2, 64, "f16", 0, True, True, False)
    eng.warm_up()
    tokens = prompt(model, 5, 150)
    _, cold = generate(eng, 0, tokens)
    assert eng.copy_cells(0, 1)
    assert eng.cached(1) == eng.cached(0) and eng.marks(1) == eng.marks(0)
    reused, warm = generate(eng, 1, tokens)
    assert reused == (len(tokens) - 1 if eng.exact_rows else (len(tokens) - 1) // 64 * 64)
    assert warm == cold
    held = eng.cached(1)
    turn = held + prompt(model, 6, 20)[1:]
    marks = eng.marks(1)
    assert eng.reusable_copy(held, marks, turn) == len(held)
    assert eng.restore_cells(2, eng.save_cells(1), held, marks)
    assert eng.reusable(2, turn) == len(held)
    if not eng.exact_rows:  # how the cells came about is part of them
        with pytest.raises(library.load().LlamaError, match="marks"):
            eng.restore_cells(2, eng.save_cells(1), held)


def test_a_fast_schedulers_cache_serves_a_chats_next_turn_after_its_slot_moved_on(
        model: Any) -> None:
    """One slot, the fast profile: a chat's first turn, another prompt in between (the
    slot's cells go to the prompt cache with their marks), then the chat's next turn
    gets them back and reads only its new tokens, and the first turn asked again gets
    the text it got the first time."""
    import asyncio

    from shimmy.engine import library
    from shimmy.engine.scheduler import Generation, Sampling, Scheduler

    eng = library.load().BatchEngine(model, 1024, 1, 2, 64, "f16", 0, True, True, False)
    eng.warm_up()
    first, other = prompt(model, 7, 120), prompt(model, 8, 120)

    async def scenario() -> None:
        # a prompt cache given: served, the embedded model's window rings are never kept
        # in one (BatchEngine.caches_cells), but these prompts fit its window, so a copy
        # holds every cell and the fast profile's path through the cache runs whole
        scheduler = Scheduler(eng, "fast", PromptCache(1 << 30), copies_cells=True)

        async def ask(tokens: list[int]) -> tuple[str, int]:
            """The answer, and how many prompt tokens came from cells."""
            item = Generation(tokens, 12, Sampling(temperature=0.0, seed=1), [], True)
            scheduler.submit(item)
            return await asyncio.wait_for(item.text(), 60), item.cached_tokens

        try:
            answer, _ = await ask(first)
            history = eng.cached(0)
            await ask(other)
            _, reused = await ask(history + prompt(model, 9, 20)[1:])
            assert reused == len(history)
            again, reused = await ask(first)
            assert reused > 0 and again == answer
        finally:
            scheduler.stop()

    asyncio.run(scenario())


@pytest.mark.exact_rows
@pytest.mark.parametrize("prompt_cache", ["256MiB", "0"])
def test_a_prompt_is_read_from_memory_after_its_slot_moved_on(
        model_path: Path, tmp_path: Path, prompt_cache: str) -> None:
    process = ShimmyProcess(["--model-path", str(model_path), "--parallel", "1",
                             "--prompt-cache", prompt_cache], isolated_env(tmp_path), tmp_path)
    try:
        rng = random.Random(3)
        first, other = (" ".join(rng.choice(WORDS) for _ in range(200)) for _ in range(2))
        answers = []
        for text in (first, other, first):  # the one slot serves another prompt between
            status, body = request_json(process.port, "POST", "/v1/completions",
                                        {"prompt": text, "max_tokens": 8, "temperature": 0})
            assert status == 200, body
            answers.append(body)
        usage = answers[2]["usage"]
        cached = usage["prompt_tokens_details"]["cached_tokens"]
        if prompt_cache == "0":
            assert cached < 8
        else:
            assert cached == usage["prompt_tokens"] - 1
        assert answers[2]["choices"][0]["text"] == answers[0]["choices"][0]["text"]
    finally:
        process.stop()


@pytest.mark.exact_rows
def test_a_prompt_another_request_is_generating_from_is_copied(
        model_path: Path, tmp_path: Path) -> None:
    """Two requests with one long prompt (a shared system prompt, say): the second, sent
    while the first still generates, copies its cells instead of reading the prompt."""
    process = ShimmyProcess(["--model-path", str(model_path), "--parallel", "2",
                             "--prompt-cache", "0"], isolated_env(tmp_path), tmp_path)
    try:
        text = " ".join(random.Random(4).choice(WORDS) for _ in range(200))
        body = {"prompt": text, "max_tokens": 200, "temperature": 0, "stream": True,
                "ignore_eos": True}
        first = sse_events(process.port, "/v1/completions", body)
        next(first)  # the first token's event: its prompt has been read
        status, second = request_json(process.port, "POST", "/v1/completions",
                                      {"prompt": text, "max_tokens": 4, "temperature": 0})
        still_streaming = next(first)
        first.close()
        assert status == 200, second
        assert isinstance(still_streaming, dict) and still_streaming["choices"]
        usage = second["usage"]
        assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] - 1
    finally:
        process.stop()
