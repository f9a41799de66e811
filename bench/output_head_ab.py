"""A step's time with shimmy's output head against ggml's product, in one process.

    .venv/bin/python bench/output_head_ab.py              # 3 rounds of 24 steps each
    .venv/bin/python bench/output_head_ab.py --rounds 5

Two engines on the embedded model, one computing the output layer's product with
``shimmy/engine/output_head.h`` and one leaving it to ggml (what ``SHIMMY_OUTPUT_HEAD=ggml``
does), each with 8 slots of a bf16 cache and 2 threads. Each round times ``step()`` while
1, 4 and 8 slots decode (no guessing ahead, so a slot is one row), the two engines taking
turns shape by shape so the machine's drift hits both alike. Prints the median
milliseconds per step of each and their ratio, and checks that both engines generated
the same tokens.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SLOTS = 8
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def timed_steps(eng: Any, prompts: list[list[int]], steps: int) -> tuple[list[float], list]:
    """Start ``prompts`` in slots 0.., read them, then time ``steps`` decode steps.

    Returns the milliseconds of each timed step and every slot's text, piece by piece."""
    for slot, tokens in enumerate(prompts):
        eng.start(slot, tokens, {"temperature": 0.0}, [], steps + 64, True)
    tokens: dict[int, list] = {slot: [] for slot in range(len(prompts))}

    def take(events: list) -> None:
        for slot, text, _finish, _n, _logprobs, _stop in events:
            tokens[slot].append(text)

    while not all(tokens.values()):  # the prompts are read, every slot has a token
        take(eng.step())
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        events = eng.step()
        times.append((time.perf_counter() - started) * 1000)
        take(events)
    for slot in range(len(prompts)):
        eng.release(slot)
    return times, [tokens[slot] for slot in sorted(tokens)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=24)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from shimmy.engine import library
    from shimmy.models.embedded import embedded_model_path

    lib = library.load()
    model = lib.Model(str(embedded_model_path()), 0, True, [])
    engines = {}
    for name, own in (("shimmy head", True), ("ggml", False)):
        eng = lib.BatchEngine(model, 1024, SLOTS, 2, 64, "bf16", 0, True, own)
        eng.warm_up()
        engines[name] = eng
    if not engines["shimmy head"].own_head:
        print("this CPU or model does not run the output head: nothing to compare")
        return 1
    prompts = [model.tokenize(f"{PROMPT} ({i})", True, False) for i in range(SLOTS)]
    times: dict[tuple[str, int], list[float]] = {}
    texts: dict[tuple[str, int], list] = {}
    for _ in range(args.rounds):
        for busy in (1, 4, 8):
            for name, eng in engines.items():
                step_ms, text = timed_steps(eng, prompts[:busy], args.steps)
                times.setdefault((name, busy), []).extend(step_ms)
                texts[(name, busy)] = text
    print(f"{'slots decoding':>15} {'shimmy head ms':>15} {'ggml ms':>9} {'ratio':>7}")
    for busy in (1, 4, 8):
        own = statistics.median(times[("shimmy head", busy)])
        ggml = statistics.median(times[("ggml", busy)])
        same = texts[("shimmy head", busy)] == texts[("ggml", busy)]
        print(f"{busy:>15} {own:>15.1f} {ggml:>9.1f} {ggml / own:>6.2f}x"
              + ("" if same else "  (texts differ!)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
