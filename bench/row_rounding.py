"""Does a token's row round alike when its sequence has 1 row in a step or R rows?

    .venv/bin/python bench/row_rounding.py --kv-type f16 --rows 2 4
    .venv/bin/python bench/row_rounding.py --kv-type bf16 --rows 2 4 8 --at 2:140:3
    .venv/bin/python bench/row_rounding.py --kv-type bf16 --rows 8 --tiled-kernel

Straight through llama.cpp's C API (llama-cpp-python's bindings), with the context
settings shimmy's engine uses. For each prompt length m, two fresh contexts read the same
m tokens; one decodes token m alone, the other as the first of R rows; the logits are
compared bit for bit. Prints one mark per position: ``=`` identical, ``X`` different.
Guessing ahead (``--draft``) is exact only where every mark is ``=``. ``--tiled-kernel``
turns llama.cpp's tiled K-quant kernel back on (shimmy turns it off; it takes over from 8
rows on).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TEXT = ("The history of the city begins in the twelfth century, when a small group of "
        "merchants settled on the river bank and built a market. Over the next two hundred "
        "years the town grew into a busy port, and its walls, churches and bridges were "
        "built by people who came from all over the region to trade wool, salt and fish. ")
KV_TYPES = {"f16": (1, 0), "bf16": (30, 1), "q8_0": (8, 1)}  # ggml type, flash attention


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kv-type", choices=KV_TYPES, default="bf16")
    parser.add_argument("--rows", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--at", default="2:140:3", help="prompt lengths, START:STOP:STEP")
    parser.add_argument("--tiled-kernel", action="store_true",
                        help="llama.cpp's tiled K-quant kernel on, as llama.cpp has it")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import llama_cpp as llama

    from shimmy.engine import library
    from shimmy.models.embedded import embedded_model_path

    library.load()  # loads the CPU backend the bindings' library uses
    if args.tiled_kernel:  # library.load() set it to 0; llama.cpp reads it at first use
        os.environ["GGML_CPU_TILED_MM"] = "1"
    params = llama.llama_model_default_params()
    params.use_extra_bufts = False  # as shimmy loads weights on AMX builds
    model = llama.llama_model_load_from_file(str(embedded_model_path()).encode(), params)
    vocab = llama.llama_model_get_vocab(model)
    n_vocab = llama.llama_vocab_n_tokens(vocab)
    data = (TEXT * 20).encode()
    buffer = (llama.llama_token * 4096)()
    count = llama.llama_tokenize(vocab, data, len(data), buffer, 4096, True, False)
    tokens = list(buffer[:count])
    batch = llama.llama_batch_init(512, 0, 1)

    def context():
        cp = llama.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = 4096, 64, 64, 1
        cp.kv_unified, cp.swa_full = False, True
        cp.type_k = cp.type_v = KV_TYPES[args.kv_type][0]
        cp.flash_attn_type = KV_TYPES[args.kv_type][1]
        cp.n_threads = cp.n_threads_batch = 2
        return llama.llama_init_from_model(model, cp)

    def decode(ctx, first: int, count: int, logits: bool) -> None:
        batch.n_tokens = count
        for i in range(count):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = tokens[first + i], first + i, 1
            batch.seq_id[i][0], batch.logits[i] = 0, logits
        if llama.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    def row_logits(m: int, rows: int) -> np.ndarray:
        ctx = context()
        for start in range(0, m, 64):
            decode(ctx, start, min(64, m - start), False)
        decode(ctx, m, rows, True)
        out = np.ctypeslib.as_array(llama.llama_get_logits_ith(ctx, 0), shape=(n_vocab,)).copy()
        llama.llama_free(ctx)
        return out

    start, stop, step = (int(part) for part in args.at.split(":"))
    for rows in args.rows:
        marks = "".join("=" if np.array_equal(row_logits(m, 1), row_logits(m, rows)) else "X"
                        for m in range(start, stop, step))
        print(f"{args.kv_type} R={rows}: {marks}  ({marks.count('X')} of {len(marks)} differ)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
