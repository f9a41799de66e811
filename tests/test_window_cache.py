"""Sliding-window layers: cached at their window in the fast profile, whole in the
invariant one, and an agent's next turn reuses its prefix in both.

The embedded Gemma 3 has a 512-token window on five of every six layers. With the
window alone cached (llama-server's default), llama.cpp keeps a ring of a few hundred
cells per slot for those layers, so a long answer pushes the cells that the prompt's
last chunks attend to out of it; the engine then reuses the prefix to the token,
generated cells included, rather than reading the whole history again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

GREEDY = {"temperature": 0.0, "seed": 0}
TEXT = " ".join(f"Step {i}: open the file, read line {i}, and note what it says."
                for i in range(70))


@pytest.fixture(scope="module")
def model(model_path: Path) -> Any:
    from shimmy.engine import library

    return library.load().Model(str(model_path), 0, True, [])


def make_engine(model: Any, invariant: bool) -> Any:
    from shimmy.engine import library

    engine = library.load().BatchEngine(model, 2048, 2, 2, 64, "bf16" if invariant else "f16",
                                        0, True, True, invariant)
    engine.warm_up()
    return engine


def run(engine: Any, tokens: list[int], max_tokens: int) -> int:
    """Generate in slot 0 to the end; how many prompt tokens came from the cache."""
    reused = engine.start(0, tokens, GREEDY, [], max_tokens, True)
    while not any(event[2] is not None for event in engine.step()):
        pass
    return reused


@pytest.mark.parametrize("invariant", [False, True], ids=["fast", "invariant"])
def test_an_agents_next_turn_reuses_its_prefix_after_a_long_answer(
        model: Any, invariant: bool) -> None:
    engine = make_engine(model, invariant)
    assert engine.profile_facts()["swa_cache"] == ("full" if invariant else "window")
    prompt = model.tokenize(TEXT, True, False)
    assert len(prompt) > 900  # past the window's ring
    assert run(engine, prompt, 400) == 0
    history = engine.cached(0)  # the prompt and the answer, as the next turn sends them
    assert len(history) >= len(prompt) + 399
    next_turn = history + model.tokenize("\nUser: and after that?\nModel:", False, False)
    reused = run(engine, next_turn, 4)
    if invariant:  # whole chunks of prompt-read cells, as a cold start reads them
        assert len(prompt) - 64 < reused <= len(prompt)
    else:  # the window of those chunks is gone: to the token, the answer included
        assert reused == len(history)

