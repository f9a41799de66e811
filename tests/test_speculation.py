"""Guessing ahead (prompt-lookup speculative decoding) changes nothing but speed.

A lone request guesses its next tokens from its own text and decodes them in the same
step; its chain samples each guessed row in turn. These tests compare the tokens and
log-probabilities of every generated token with guessing on and off, bit for bit, on
text that repeats itself (so guesses are made, and some hold).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

PROMPT = ("Write a short story about a robot who learns to paint.\n\n"
          "Write a short story about a robot who learns to sing.\n\n")
GREEDY = {"temperature": 0.0, "seed": 0}
SAMPLED = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "seed": 42}
Trace = list[tuple[int, float]]


@pytest.fixture(scope="module")
def model(model_path: Path) -> Any:
    from shimmy.engine import library

    return library.load().Model(str(model_path), 0, True, [])


def make_engine(model: Any, kv_type: str, draft: int) -> Any:
    from shimmy.engine import library

    eng = library.load().BatchEngine(model, 512, 2, 2, 64, kv_type, draft, True)
    eng.warm_up()
    return eng


@pytest.fixture(scope="module", params=["bf16", "q8_0"])
def engines(request: pytest.FixtureRequest, model: Any) -> tuple[Any, Any, Any]:
    """A guessing and a plain engine over the same cache type."""
    return model, make_engine(model, request.param, 3), make_engine(model, request.param, 0)


@pytest.fixture
def kv_type(engines: Any, request: pytest.FixtureRequest) -> str:
    return request.node.callspec.params["engines"]


def generate(eng: Any, tokens: list[int], sampling: dict, max_tokens: int,
             stops: list[str] | None = None, slot: int = 0) -> tuple[str, Trace, str, int]:
    """Text, ``(token, logprob)`` trace, finish reason and token count of one request."""
    eng.start(slot, tokens, sampling, stops or [], max_tokens, not stops, 0)
    text, trace = "", []
    while True:
        for _slot, piece, finish, count, logprobs, _stop in eng.step():
            text += piece
            trace.extend((entry[0], entry[2]) for entry in logprobs or ())
            if finish is not None:
                return text, trace, finish, count


@pytest.mark.exact_rows
@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_guessing_ahead_gives_the_plain_tokens_and_logprobs(engines: Any, sampling: dict) -> None:
    model, guessing, plain = engines
    tokens = model.tokenize(PROMPT, True, False)
    drafted, accepted = guessing.n_drafted, guessing.n_accepted
    fast = generate(guessing, tokens, sampling, 96)
    assert fast == generate(plain, tokens, sampling, 96)
    assert fast[2:] == ("length", 96)
    assert guessing.n_drafted > drafted  # guesses were made...
    assert guessing.n_accepted > accepted  # ...and some held, several tokens in one step
    assert plain.n_drafted == 0


def test_a_stop_string_inside_a_run_of_right_guesses_ends_there(engines: Any) -> None:
    model, guessing, plain = engines
    tokens = model.tokenize(PROMPT, True, False)
    text = generate(plain, tokens, GREEDY, 96)[0]
    # the third line of the answer: the loop of story requests is by then being guessed
    stop = text.split("\n\n")[3][:30]
    expected = generate(plain, tokens, GREEDY, 96, [stop])
    assert expected[2] == "stop"
    assert generate(guessing, tokens, GREEDY, 96, [stop]) == expected


@pytest.mark.parametrize("max_tokens", [1, 2, 5, 17])
def test_max_tokens_is_exact_when_guesses_run_past_it(engines: Any, max_tokens: int) -> None:
    model, guessing, plain = engines
    tokens = model.tokenize(PROMPT * 2, True, False)
    fast = generate(guessing, tokens, GREEDY, max_tokens)
    assert fast[3] == len(fast[1]) == max_tokens
    assert fast == generate(plain, tokens, GREEDY, max_tokens)


def test_the_cache_after_guessing_serves_the_next_request_like_a_cold_one(
        engines: Any, kv_type: str) -> None:
    """Wrong guesses' cells are dropped: a request reusing the slot's prefix afterwards
    gets what a fresh engine gives it."""
    model, guessing, _ = engines
    long_prompt = model.tokenize(PROMPT * 8, True, False)
    assert len(long_prompt) > 128
    generate(guessing, long_prompt, GREEDY, 64)
    again = generate(guessing, long_prompt, SAMPLED, 32)
    assert guessing.cached_tokens(0) >= 128
    fresh = make_engine(model, kv_type, 3)
    assert again == generate(fresh, long_prompt, SAMPLED, 32)


def test_grammar_constrained_guessing_matches_plain(engines: Any) -> None:
    model, guessing, plain = engines
    tokens = model.tokenize("Count in words: one two three", True, False)
    sampling = dict(SAMPLED, grammar='root ::= (" one" | " two" | " three")+')
    fast = generate(guessing, tokens, sampling, 40)
    assert fast == generate(plain, tokens, sampling, 40)
    assert set(fast[0].split()) <= {"one", "two", "three"}


def test_an_f16_cache_never_guesses(model: Any) -> None:
    """Over f16 one row and several rows of a sequence round differently."""
    assert make_engine(model, "f16", 3).n_draft == 0


def test_models_whose_kernels_depend_on_row_count_never_guess(model_path: Path,
                                                               tmp_path: Path) -> None:
    """The embedded model's weights are quantized (same sums for one row or several);
    float weights or a LoRA adapter would round a guessed row differently."""
    from tiny_model import write_spelling_model

    from shimmy.engine.loaded import exact_weights
    from shimmy.models.gguf import read_gguf_info

    embedded = read_gguf_info(model_path)
    assert exact_weights(embedded, [])
    assert not exact_weights(embedded, [tmp_path / "adapter.gguf"])
    assert not exact_weights(None, [])
    tiny = read_gguf_info(write_spelling_model(tmp_path / "speller.gguf", "abc"))
    assert tiny.matrix_types == {0}  # F32
    assert not exact_weights(tiny, [])


@pytest.mark.exact_rows
def test_a_loaded_model_guesses_as_configured(model_path: Path) -> None:
    from shimmy.engine.loaded import EngineSettings, LoadedModel
    from shimmy.models.gguf import read_gguf_info

    info = read_gguf_info(model_path)
    for kv_type, expected in (("bf16", 3), ("f16", 0)):
        settings = EngineSettings(ctx=256, parallel=1, threads=2, kv_type=kv_type, draft=3)
        loaded = LoadedModel("default", model_path, settings, [], info)
        try:
            assert loaded.engine.n_draft == expected
        finally:
            loaded.close()
