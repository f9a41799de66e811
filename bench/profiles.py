"""A new long prompt read to its first token by the engine alone (no HTTP), per engine
profile, cache type, prompt chunk and prompt rows per pass: what ``--deterministic``,
``--kv-cache-type``, ``--batch-size`` and ``--flash-attn off`` (``fast-plain``) cost, and what
the cache's pages coming back as cells fill costs (``fast-resident`` keeps them resident).

    .venv/bin/python bench/profiles.py [--tokens 4096] [--threads 2] [--repeats 3]
        [--model FILE] [--profiles fast fast-plain]

Each configuration runs in a fresh process (llama.cpp reads its tiled-kernel switch once
per process), taking turns with the others; figures are medians of wall seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = [  # (profile, cache, chunk, prompt rows per pass); the defaults come first
    ("fast", "f16", 64, 256), ("fast", "f16", 64, 64), ("fast", "f16", 64, 512),
    ("invariant", "bf16", 64, 64), ("invariant", "f16", 512, 512),
    ("fast-plain", "f16", 64, 256),  # plain attention over the f16 cache (--flash-attn off)
    ("fast-resident", "f16", 64, 256),  # the whole KV cache resident from the start
]
TEXT = "the river runs past a quiet town where people sell bread and fish "


def one_run(profile: str, kv: str, chunk: int, rows: int, tokens: int, threads: int,
            model_file: Path | None) -> float:
    sys.path.insert(0, str(ROOT))
    from shimmy.engine import library
    from shimmy.models.embedded import embedded_model_path

    deterministic = profile == "invariant"
    # cache_on_use: the cache's pages come back as cells are written (cache_pages.h)
    library.set_deterministic(deterministic)
    engine_module = library.load()
    model = engine_module.Model(str(model_file or embedded_model_path()))
    engine = engine_module.BatchEngine(model, tokens + 64, 2, threads, chunk, kv, 0, True,
                                       True, deterministic, rows,
                                       profile in ("fast", "fast-resident"),
                                       profile != "fast-resident")
    engine.warm_up()
    prompt = model.tokenize(TEXT * (tokens // 10), True)[:tokens]
    started = time.perf_counter()
    engine.start(0, prompt, {"temperature": 0.0}, [], 1)
    while not engine.step():
        pass
    return time.perf_counter() - started


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", type=Path, help="a GGUF file (default: the embedded model)")
    parser.add_argument("--profiles", nargs="+", metavar="NAME",
                        help="only the first row of each: fast, fast-plain, fast-resident, "
                             "invariant (default: every row)")
    parser.add_argument("--one", nargs=4, metavar=("PROFILE", "CACHE", "CHUNK", "ROWS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        profile, kv, chunk, rows = args.one
        print(json.dumps(one_run(profile, kv, int(chunk), int(rows), args.tokens,
                                 args.threads, args.model)))
        return 0
    configs = CONFIGS if not args.profiles else [  # each named profile's first row
        next(c for c in CONFIGS if c[0] == name) for name in args.profiles]
    model = ["--model", str(args.model)] if args.model else []
    seconds: dict[tuple[str, str, int, int], list[float]] = {c: [] for c in configs}
    for _ in range(args.repeats):
        for config in configs:
            done = subprocess.run(
                [sys.executable, __file__, "--tokens", str(args.tokens), "--threads",
                 str(args.threads), *model, "--one", *map(str, config)],
                capture_output=True, text=True, check=True)
            seconds[config].append(float(done.stdout.strip().splitlines()[-1]))
    base = statistics.median(seconds[configs[0]])
    print(f"| profile | cache | chunk | rows a pass | first token, {args.tokens}-token "
          "prompt (s) | vs the default |\n|---|---|---|---|---|---|")
    for (profile, kv, chunk, rows), values in seconds.items():
        median = statistics.median(values)
        print(f"| {profile} | {kv} | {chunk} | {rows} | {median:.1f} | {median / base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
