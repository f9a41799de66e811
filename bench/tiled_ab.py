"""llama.cpp's tiled K-quant matrix kernel on and off, in alternating processes.

    .venv/bin/python bench/tiled_ab.py            # 4 rounds
    .venv/bin/python bench/tiled_ab.py --rounds 2

llama.cpp 0.3.36 multiplies K-quant weights by a tiled kernel from 8 rows on
(``GGML_CPU_TILED_MM``, on by default); shimmy turns it off so that a row rounds alike in
any step (docs/ARCHITECTURE.md). This times what that costs, straight through llama.cpp's
C API with the engine's context settings (bf16 cache, flash attention, a stream per
sequence, 2 threads): one pass of 8 one-row sequences, the same rows as 4 + 4, a
12-token prompt and a 1,000-token prompt (in 64-token chunks). Each round runs one
process per setting, so the machine's drift hits both alike; prints medians per process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = ("The history of the city begins in the twelfth century, when a small group of "
        "merchants settled on the river bank and built a market. ")


def measure(tiled: str) -> str:
    sys.path.insert(0, str(ROOT))
    from direct import Direct

    from shimmy.engine import library

    library.load()  # which sets GGML_CPU_TILED_MM=0; llama.cpp reads it at its first product
    os.environ["GGML_CPU_TILED_MM"] = tiled
    run = Direct(8, 64, 64, TEXT * 60)
    tokens, llama, mem = run.tokens, run.llama, run.mem

    def decode(rows: list[tuple[int, int, int]], logits: bool = True) -> float:
        return run.decode([(token, pos, seq, logits) for token, pos, seq in rows])

    def prompt_ms(length: int) -> float:
        llama.llama_memory_clear(mem, False)
        return sum(decode([(tokens[i], i, 0) for i in range(start, min(start + 64, length))],
                          False) for start in range(0, length, 64))

    long_prompt = statistics.median(prompt_ms(1000) for _ in range(3))
    short_prompt = statistics.median(prompt_ms(12) for _ in range(10))
    llama.llama_memory_clear(mem, False)
    for seq in range(8):
        decode([(tokens[seq * 16 + i], i, seq) for i in range(16)], False)
    one_pass = [decode([(tokens[200 + k + seq], 16 + k, seq) for seq in range(8)])
                for k in range(40)]
    for seq in range(8):
        llama.llama_memory_seq_rm(mem, seq, 16, -1)
    two_passes = [decode([(tokens[300 + k + seq], 16 + k, seq) for seq in range(4)])
                  + decode([(tokens[300 + k + seq], 16 + k, seq) for seq in range(4, 8)])
                  for k in range(40)]
    return (f"tiled {'on ' if tiled == '1' else 'off'}: 8 rows in one pass "
            f"{statistics.median(one_pass):.1f} ms, as 4 + 4 {statistics.median(two_passes):.1f}"
            f" ms, 12-token prompt {short_prompt:.1f} ms, 1,000-token prompt "
            f"{long_prompt:.0f} ms")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--child", choices=["0", "1"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(measure(args.child), flush=True)
        return 0
    for _ in range(args.rounds):
        for tiled in ("1", "0"):
            child = subprocess.run([sys.executable, __file__, "--child", tiled],
                                   capture_output=True, text=True, check=True)
            print(child.stdout.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
