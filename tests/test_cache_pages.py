"""The KV cache is resident as its cells fill, not from the moment a context is made.

llama.cpp clears a new context's whole cache, which makes every page of it resident; the
engine hands those pages back after its warm-up (shimmy/engine/cache_pages.h), so a
server configured for long contexts holds memory for the cells its requests use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

GREEDY = {"temperature": 0.0, "seed": 0}
TEXT = " ".join(f"Step {i}: open the file, read line {i}, and note what it says."
                for i in range(70))
# the embedded Gemma 3 270M: 18 layers with one 256-wide K and V head each
CELL_BYTES_BF16 = 18 * 2 * 256 * 2


def resident() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


@pytest.fixture(scope="module")
def model(model_path: Path) -> Any:
    from shimmy.engine import library

    return library.load().Model(str(model_path), 0, True, [])


def first_token(engine: Any, tokens: list[int], slot: int = 0) -> str:
    engine.start(slot, tokens, GREEDY, [], 8, True)
    text = ""
    while True:
        for _slot, piece, finish, *_ in engine.step():
            text += piece
            if finish is not None:
                return text


def test_a_new_context_holds_no_cache_until_its_cells_fill(model: Any) -> None:
    from shimmy.engine import library

    before = resident()
    # invariant profile: every layer cached whole, 4 slots of 8,192 cells
    engine = library.load().BatchEngine(model, 8192, 4, 2, 64, "bf16", 0, True, True, True)
    engine.warm_up()
    reserved = 4 * 8192 * CELL_BYTES_BF16
    assert engine.cache_released >= reserved * 0.95, (engine.cache_released, reserved)
    loaded = resident()
    assert loaded - before < reserved / 4, (before, loaded, reserved)

    prompt = model.tokenize(TEXT, True, False)
    assert len(prompt) > 900
    text = first_token(engine, prompt)
    grown = resident() - loaded
    # each prompt token's cells are written, so their pages are back (most of them)
    assert grown > len(prompt) * CELL_BYTES_BF16 / 2, (grown, len(prompt))
    # cells on pages never written read as cleared: the same answer in an unused slot
    assert first_token(engine, prompt, slot=3) == text
