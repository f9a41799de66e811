"""A seed gives bit-identical results alone and beside other requests, at long context too.

Texts can agree while the arithmetic behind them drifts, so these tests compare the
log-probability of every generated token, which differ at the first changed rounding.
The prompts are long enough that the attention spans more than 512 cached cells, where
llama.cpp's CPU kernels have most ways to split the work differently by batch shape.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

SAMPLING = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05}
WORDS = ["river", "mountain", "ocean", "forest", "desert", "city", "village", "garden",
         "bridge", "tower", "castle", "harbor", "valley", "island", "meadow", "canyon"]
MAX_TOKENS = 16
Trace = list[tuple[int, float]]


@pytest.fixture(scope="module")
def model(model_path: Path) -> Any:
    from shimmy.engine import library

    return library.load().Model(str(model_path), 0, True, [])


@pytest.fixture(scope="module", params=["f16", "bf16", "q8_0"])
def engine(request: pytest.FixtureRequest, model: Any) -> Any:
    """Each KV cache type: each comes with its own attention kernels. Guessing ahead is
    on, as served: a lone request guesses, one in company does not."""
    from shimmy.engine import library

    eng = library.load().BatchEngine(model, 1024, 3, 2, 64, request.param, 3, True)
    eng.warm_up()
    return model, eng


def prompt(model: Any, seed: int, n_words: int) -> list[int]:
    rng = random.Random(seed)
    return model.tokenize(" ".join(rng.choice(WORDS) for _ in range(n_words)), True, False)


def run(eng: Any, starts: dict[int, tuple[list[int], int]]) -> dict[int, Trace]:
    """Start each slot at its step (``{slot: (prompt, step)}``), seeded by its prompt;
    each slot's ``(token, logprob)`` trace once all have finished."""
    traces: dict[int, Trace] = {slot: [] for slot in starts}
    finished: set[int] = set()
    for step in range(2000):
        for slot, (tokens, at) in starts.items():
            if at == step:
                eng.start(slot, tokens, dict(SAMPLING, seed=len(tokens)), [], MAX_TOKENS,
                          True, 0)
        for slot, _text, finish, _n, logprobs, _stop in eng.step():
            traces[slot].extend((entry[0], entry[2]) for entry in logprobs or ())
            if finish is not None:
                finished.add(slot)
        if len(finished) == len(starts):
            return traces
    raise AssertionError("generation did not finish")


def test_long_prompt_alone_equals_staggered_company(engine: Any) -> None:
    model, eng = engine
    long_prompt = prompt(model, 1, 530)
    assert len(long_prompt) > 512
    alone = run(eng, {1: (long_prompt, 0)})[1]
    assert len(alone) == MAX_TOKENS
    # cold again in another slot, with company joining while it reads and while it decodes
    together = run(eng, {2: (long_prompt, 0), 0: (prompt(model, 2, 40), 3),
                         1: (prompt(model, 3, 100), 8)})
    assert together[2] == alone


def test_company_that_leaves_midway_changes_nothing(engine: Any) -> None:
    model, eng = engine
    long_prompt = prompt(model, 4, 530)
    alone = run(eng, {0: (long_prompt, 0)})[0]
    # a short request decodes beside it for a few steps, then the long one goes on alone
    together = run(eng, {1: (long_prompt, 0), 2: (prompt(model, 5, 8), 2)})
    assert together[1] == alone


def test_a_prompt_goes_to_the_slot_that_saves_reading_else_to_the_lowest(engine: Any) -> None:
    """Busy slots stay packed low (llama.cpp decodes consecutive slots in one pass): a
    slot's cells win a prompt only where they save 8 tokens of reading or more."""
    model, eng = engine
    held = prompt(model, 17, 140)  # 128 tokens reusable even in whole chunks
    run(eng, {2: (held, 0)})
    starts_alike = held[:5] + prompt(model, 18, 30)[1:]
    assert eng.choose_slot(starts_alike) == 0
    assert eng.choose_slot(held[:20] + prompt(model, 18, 30)[1:]) == (2 if eng.exact_rows else 0)
    assert eng.choose_slot(held) == 2


def test_a_repeated_prompt_reads_one_token_beside_a_decoding_request(engine: Any) -> None:
    """A prompt the slot holds already is read from its last token on. Where a row rounds
    alike in any step, that token is decoded in the same pass as another request's next
    token instead of a pass of its own; both texts stay what they are alone."""
    model, eng = engine
    repeated, company = prompt(model, 12, 150), prompt(model, 13, 60)
    alone = run(eng, {0: (repeated, 0)})[0]
    company_alone = run(eng, {1: (company, 0)})[1]
    seed = dict(SAMPLING, seed=len(repeated))
    eng.start(1, company, dict(SAMPLING, seed=len(company)), [], MAX_TOKENS, True, 0)
    traces: dict[int, Trace] = {0: [], 1: []}
    steps = 0
    while len(traces[0]) < MAX_TOKENS or len(traces[1]) < MAX_TOKENS:
        if steps == 3:
            reused = eng.start(0, repeated, seed, [], MAX_TOKENS, True, 0)
            expected = len(repeated) - 1 if eng.exact_rows else 128
            assert reused == expected
        passes = eng.n_passes
        events = eng.step()
        if steps == 3:  # both got their next token, in one pass where rows round alike
            assert {event[0] for event in events} == {0, 1}
            assert eng.n_passes - passes == (1 if eng.exact_rows else 2)
        for slot, _text, _finish, _n, logprobs, _stop in events:
            traces[slot].extend((entry[0], entry[2]) for entry in logprobs or ())
        steps += 1
    assert traces[0] == alone
    assert traces[1] == company_alone


def test_a_step_is_one_pass_with_a_prompt_read_and_an_idle_slot_between(engine: Any) -> None:
    """Where a row rounds alike in any step, a step is one ``llama_decode``: a cold prompt
    is read in the same batch as the decoding slots' rows, and an idle slot between busy
    ones gets a throw-away row (llama.cpp would split the batch at the gap). The idle
    slot's cells stay as they were: its prompt is then reused but for its last token, and
    every text is what it is alone."""
    model, eng = engine
    held, reader, decoder = prompt(model, 14, 40), prompt(model, 15, 90), prompt(model, 16, 20)
    held_alone = run(eng, {1: (held, 0)})[1]  # slot 1 keeps these cells, then idles
    reader_alone = run(eng, {2: (reader, 0)})[2]
    decoder_alone = run(eng, {0: (decoder, 0)})[0]
    eng.start(0, decoder, dict(SAMPLING, seed=len(decoder)), [], MAX_TOKENS, True, 0,
              False)
    traces: dict[int, Trace] = {0: [], 1: [], 2: []}
    fillers = eng.n_filler_rows
    step = 0
    while len(traces[0]) < MAX_TOKENS or len(traces[2]) < MAX_TOKENS:
        if step == 1:  # cold, in chunks of 64 tokens, while slot 0 decodes
            eng.start(2, reader, dict(SAMPLING, seed=len(reader)), [], MAX_TOKENS, True, 0,
                      False)
        passes = eng.n_passes
        for slot, _text, _finish, _n, logprobs, _stop in eng.step():
            traces[slot].extend((entry[0], entry[2]) for entry in logprobs or ())
        assert eng.n_passes - passes == 1 or not eng.exact_rows
        step += 1
    assert traces[0] == decoder_alone
    assert traces[2] == reader_alone
    assert (eng.n_filler_rows > fillers) == eng.exact_rows
    reused = eng.start(1, held, dict(SAMPLING, seed=len(held)), [], MAX_TOKENS, True, 0)
    assert reused == (len(held) - 1 if eng.exact_rows else 0)
    while len(traces[1]) < MAX_TOKENS:
        for slot, _text, _finish, _n, logprobs, _stop in eng.step():
            traces[slot].extend((entry[0], entry[2]) for entry in logprobs or ())
    assert traces[1] == held_alone


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_top_k_shortcut_picks_what_the_whole_chain_picks(engine: Any, temperature: float) -> None:
    """Without bias or penalties only the top-k logits reach the chain; a zero logit bias
    changes no logit but sends the whole vocabulary through it."""
    model, eng = engine
    tokens = prompt(model, 6, 20)
    traces = []
    for bias in ({}, {5: 0.0}):
        sampling = dict(SAMPLING, temperature=temperature, seed=11, logit_bias=bias)
        eng.start(0, tokens, sampling, [], 48, True, 0)
        trace: Trace = []
        while not trace or len(trace) < 48:
            for _slot, _text, _finish, _n, logprobs, _stop in eng.step():
                trace.extend((entry[0], entry[2]) for entry in logprobs or ())
        traces.append(trace)
    assert traces[0] == traces[1]


def test_a_chat_turn_reusing_its_history_rounds_as_a_cold_start(engine: Any) -> None:
    """The next turn's prompt holds the last turn's prompt and answer (generated with
    guesses, where the cache type allows). Where a row rounds alike in any step, every
    cached cell is reused, the answer's included; elsewhere the prompt's cells in whole
    chunks. The new turn's tokens equal those of a slot that reads the whole prompt cold."""
    model, eng = engine
    first = prompt(model, 7, 300)
    answer = [token for token, _ in run(eng, {0: (first, 0)})[0]]
    second = first + answer + prompt(model, 8, 20)[1:]
    sampling = dict(SAMPLING, seed=3)
    traces = []
    for slot in (0, 1):  # slot 0 holds the first turn; slot 1 another request
        reused = eng.start(slot, second, sampling, [], MAX_TOKENS, True, 0)
        if slot == 0 and eng.exact_rows:
            assert reused == len(first) + len(answer) - 1  # the last token has no cell
        elif slot == 0:
            assert reused == len(first) - len(first) % 64 > 0
        trace: Trace = []
        while len(trace) < MAX_TOKENS:
            for _slot, _text, _finish, _n, logprobs, _stop in eng.step():
                trace.extend((entry[0], entry[2]) for entry in logprobs or ())
        traces.append(trace)
    assert traces[0] == traces[1]


@pytest.mark.exact_rows
@pytest.mark.parametrize("kv_type", ["f16", "bf16"])
def test_eight_requests_decoding_together_change_nothing(model: Any, kv_type: str) -> None:
    """llama.cpp's tiled K-quant kernel, which it takes from 8 rows on, rounded each of 8
    one-row sequences otherwise than alone at about 1 position in 3. shimmy turns it off,
    and warm_up() checks that 8 rows of a sequence in one step round like 8 steps: then
    all nine slots share a pass. Over f16 the attention of several rows of a sequence
    rounds otherwise, so that check fails and passes hold 7 slots at most."""
    from shimmy.engine import library

    eng = library.load().BatchEngine(model, 512, 9, 2, 64, kv_type, 3, True)
    eng.warm_up()
    assert eng.exact_rows == (kv_type == "bf16")
    assert eng.pass_rows == (9 if kv_type == "bf16" else 7)
    probe = prompt(model, 9, 120)
    alone = run(eng, {0: (probe, 0)})[0]
    # seven requests read their prompts first, then all eight decode together
    company = {slot: (prompt(model, 10 + slot, 30), 0) for slot in range(1, 8)}
    together = run(eng, {**company, 8: (probe, 0)})
    assert together[8] == alone
