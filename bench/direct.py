"""llama.cpp straight through its C API with the engine's context settings, for the
in-process comparisons in ``bench/`` (``tiled_ab.py``, ``step_shapes.py``).

The settings are ``BatchEngine``'s defaults here: a bf16 cache with flash attention, a
KV stream per sequence, full-size sliding-window caches, 2 threads, weights without extra
buffer types; ``shimmy.engine.library.load()`` has turned llama.cpp's tiled K-quant kernel
off unless the caller set ``GGML_CPU_TILED_MM`` again before the first decode.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
Row = tuple[int, int, int, bool]  # token, position, sequence, logits


class Direct:
    def __init__(self, seqs: int, n_batch: int, n_ubatch: int, text: str) -> None:
        sys.path.insert(0, str(ROOT))
        import llama_cpp as llama

        from shimmy.models.embedded import embedded_model_path

        self.llama = llama
        params = llama.llama_model_default_params()
        params.use_extra_bufts = False
        self.model = llama.llama_model_load_from_file(str(embedded_model_path()).encode(),
                                                      params)
        vocab = llama.llama_model_get_vocab(self.model)
        data = text.encode()
        buffer = (llama.llama_token * (len(data) + 8))()
        n = llama.llama_tokenize(vocab, data, len(data), buffer, len(buffer), True, False)
        self.tokens: list[int] = list(buffer[:n])
        self.batch = llama.llama_batch_init(n_batch, 0, 1)
        cp = llama.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = seqs * 2048, n_batch, n_ubatch, seqs
        cp.kv_unified, cp.swa_full = False, True
        cp.type_k = cp.type_v = 30  # bf16
        cp.flash_attn_type = 1
        cp.n_threads = cp.n_threads_batch = 2
        self.ctx = llama.llama_init_from_model(self.model, cp)
        self.mem: Any = llama.llama_get_memory(self.ctx)

    def decode(self, rows: list[Row]) -> float:
        """One ``llama_decode`` of ``rows``; its milliseconds."""
        batch = self.batch
        batch.n_tokens = len(rows)
        for i, (token, pos, seq, logits) in enumerate(rows):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, logits
        started = time.perf_counter()
        if self.llama.llama_decode(self.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        return (time.perf_counter() - started) * 1000
