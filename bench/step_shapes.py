"""What a gap between busy slots, and a prompt read in a pass of its own, cost a step.

    .venv/bin/python bench/step_shapes.py              # 30 steps of each shape
    .venv/bin/python bench/step_shapes.py --steps 60

Straight through llama.cpp's C API with the engine's context settings (bf16 cache, flash
attention, a stream per sequence, the tiled K-quant kernel off, 2 threads), 8 sequences
holding 16 cells each. Over a stream per sequence llama.cpp splits a batch into passes of
consecutive sequences with equal row counts, so the shapes of a step compare as:

- ``8 rows``: 8 one-row sequences, one pass;
- ``gap``: 7, sequence 3 left out: two passes (0-2 and 4-7);
- ``gap + filler``: the 7 and a row without logits for sequence 3 (removed after): one pass;
- ``gap, prompt apart``: the 7, then sequence 3 reads a 12-token prompt in a
  ``llama_decode`` of its own: three passes (what shimmy did before);
- ``prompt joined``: the 7 and the 12-token prompt in one ``llama_decode``: two passes
  (a row of every sequence, then the rest of the prompt; what shimmy does now).

The shapes take turns step by step, so the machine's drift hits all alike; prints the
median milliseconds of each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = ("The history of the city begins in the twelfth century, when a small group of "
        "merchants settled on the river bank and built a market. ")
SEQS, HELD, PROMPT, GAP = 8, 16, 12, 3


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from direct import Direct, Row

    from shimmy.engine import library

    library.load()  # sets GGML_CPU_TILED_MM=0 before llama.cpp's first product
    run = Direct(SEQS, 128, 64, TEXT * 20)
    tokens, decode = run.tokens, run.decode
    llama, mem = run.llama, run.mem

    for seq in range(SEQS):
        decode([(tokens[seq * HELD + i], i, seq, False) for i in range(HELD)])
    pos = [HELD] * SEQS

    def rows(seqs: list[int], k: int) -> list[Row]:
        out = []
        for seq in seqs:
            out.append((tokens[200 + k + seq], pos[seq], seq, True))
            pos[seq] += 1
        return out

    def prompt() -> list[Row]:
        return [(tokens[300 + i], pos[GAP] + i, GAP, i == PROMPT - 1) for i in range(PROMPT)]

    def undo_gap() -> None:  # sequence 3's cells past its held ones go
        llama.llama_memory_seq_rm(mem, GAP, pos[GAP], -1)

    before, after = list(range(GAP)), list(range(GAP + 1, SEQS))
    shapes = {
        "8 rows": lambda k: decode(rows(list(range(SEQS)), k)),
        "gap": lambda k: decode(rows(before + after, k)),
        "gap + filler": lambda k: decode(rows(before, k) + [(tokens[5], pos[GAP], GAP, False)]
                                         + rows(after, k)),
        "gap, prompt apart": lambda k: decode(rows(before + after, k)) + decode(prompt()),
        "prompt joined": lambda k: decode(rows(before, k) + prompt() + rows(after, k)),
    }
    times: dict[str, list[float]] = {name: [] for name in shapes}
    for k in range(args.steps):
        for name, shape in shapes.items():
            times[name].append(shape(k))
            undo_gap()
    for name, series in times.items():
        print(f"{name:18} {statistics.median(series):6.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
