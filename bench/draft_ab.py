"""Guessing ahead (``--draft``) on and off, in one process, on everyday prompts.

    .venv/bin/python bench/draft_ab.py                 # --draft 0 against 3
    .venv/bin/python bench/draft_ab.py --drafts 0 1 2 3

One model, one engine per ``--draft`` value (bf16 cache, as served); the engines take
turns on each prompt, greedy and sampled, so the machine's drift hits them alike. Prints
each run's decode speed and how many guesses held, checks that every engine produced the
same tokens and log-probabilities, and ends with the median speed ratio to the first
value.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from run import PROMPTS  # noqa: E402  (the HTTP benchmark's prompts)

SAMPLINGS = {"greedy": {"temperature": 0.0, "seed": 0},
             "t=0.8": {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05,
                       "seed": 42}}


def generate(engine, prompt: list[int], sampling: dict, tokens: int) -> tuple[list, float]:
    """The ``(token, logprob)`` trace and the decode speed after the first token."""
    engine.start(0, prompt, sampling, [], tokens, True, 0)
    trace: list = []
    first: float | None = None
    while True:
        for _slot, _text, finish, _n, logprobs, _stop in engine.step():
            first = first or time.perf_counter()
            trace.extend((entry[0], entry[2]) for entry in logprobs or ())
            if finish is not None:
                return trace, (tokens - 1) / (time.perf_counter() - first)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drafts", type=int, nargs="+", default=[0, 3])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kv-type", default="bf16")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from shimmy.engine import library
    from shimmy.models.embedded import embedded_model_path

    sampler = library.load()
    model = sampler.Model(str(embedded_model_path()), 0, True, [])
    engines = {d: sampler.BatchEngine(model, 4096, 1, args.threads, 64, args.kv_type, d, True)
               for d in args.drafts}
    for engine in engines.values():
        engine.warm_up()
    rates: dict[int, list[float]] = {d: [] for d in engines}
    identical = True
    for text in PROMPTS:
        prompt = model.tokenize(text, True, False)
        for label, sampling in SAMPLINGS.items():
            traces = []
            cells = []
            for draft, engine in engines.items():
                drafted, accepted = engine.n_drafted, engine.n_accepted
                trace, rate = generate(engine, prompt, sampling, args.tokens)
                traces.append(trace)
                rates[draft].append(rate)
                held = (engine.n_accepted - accepted) / max(1, engine.n_drafted - drafted)
                cells.append(f"draft {draft}: {rate:5.1f} tok/s, {held:4.0%} held")
            same = all(t == traces[0] for t in traces)
            identical &= same
            print(f"{text[:40]!r:44s} {label:6s} " + " | ".join(cells)
                  + ("" if same else "  DIFFERENT"))
    base = args.drafts[0]
    for draft in engines:
        ratio = statistics.median(a / b for a, b in zip(rates[draft], rates[base], strict=True))
        print(f"draft {draft}: median {statistics.median(rates[draft]):.1f} tok/s, "
              f"{ratio:.2f}× draft {base}")
    print("tokens and log-probabilities identical in every run" if identical
          else "SOME RUNS DIFFER")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
