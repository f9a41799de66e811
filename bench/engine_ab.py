"""The engine without HTTP: KV cache types side by side, in one process.

    .venv/bin/python bench/engine_ab.py                      # 1 slot, 9-token prompt
    .venv/bin/python bench/engine_ab.py --prompt-words 1000  # decode after a long prompt
    .venv/bin/python bench/engine_ab.py --slots 8            # 8 requests together

One model, one context per KV cache type; the contexts take turns round by round, so the
machine's drift hits them alike. Each round starts cold (a fresh prompt), reads it and
generates ``--tokens`` tokens greedily in every slot. Prints medians and the ratio of each
type to the first.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS = ["river", "mountain", "ocean", "forest", "desert", "city", "village", "garden"]
GREEDY = {"temperature": 0.0, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "seed": 0}


def one_round(engine, prompts: list[list[int]], tokens: int) -> tuple[float, float]:
    """Seconds to the first generated token, and generated tokens per second after it."""
    for slot, prompt in enumerate(prompts):
        engine.start(slot, prompt, GREEDY, [], tokens, True, -1)
    started = time.perf_counter()
    first: float | None = None
    finished = 0
    while finished < len(prompts):
        for _slot, _text, finish, n_generated, _probs, _stop in engine.step():
            if first is None and n_generated >= 1:
                first = time.perf_counter()
            finished += finish is not None
    ended = time.perf_counter()
    first = first or ended
    return first - started, len(prompts) * (tokens - 1) / (ended - first)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kv-types", nargs="+", default=["f16", "bf16", "q8_0"])
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--prompt-words", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=4096)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from shimmy.engine import library
    from shimmy.models.embedded import embedded_model_path

    sampler = library.load()
    model = sampler.Model(str(embedded_model_path()), 0, True, [])
    engines = {}
    for kv_type in args.kv_types:
        engines[kv_type] = sampler.BatchEngine(model, args.ctx, max(args.slots, 1),
                                               args.threads, 64, kv_type)
        engines[kv_type].warm_up()
    rng = random.Random(1)
    reads: dict[str, list[float]] = {k: [] for k in engines}
    rates: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(args.rounds):
        prompts = [model.tokenize(" ".join(rng.choice(WORDS) for _ in range(args.prompt_words)),
                                  True, False) for _ in range(args.slots)]
        for kv_type, engine in engines.items():
            read, rate = one_round(engine, prompts, args.tokens)
            reads[kv_type].append(read)
            rates[kv_type].append(rate)
    base = args.kv_types[0]
    print(f"{args.slots} slot(s), {args.prompt_words}-word prompts, {args.tokens} tokens, "
          f"{args.rounds} rounds")
    for kv_type in engines:
        ratio = statistics.median(a / b for a, b in zip(rates[kv_type], rates[base],
                                                        strict=True))
        print(f"{kv_type:5s} first token {statistics.median(reads[kv_type]) * 1000:7.0f} ms  "
              f"decode {statistics.median(rates[kv_type]):6.1f} tok/s  "
              f"({ratio:.2f}× {base})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
