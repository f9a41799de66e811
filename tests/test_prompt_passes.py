"""The fast profile reads a prompt 256 rows a pass, a cached prefix of prompt still leaves
the rest of the prompt to be read as a cold start reads it, and a chat's next turn reuses
its history to the token.

The engine runs in a child process with llama.cpp's tiled K-quant kernel on, as a fast
`serve` runs (this process turned it off for the invariant tests, and ggml reads the
switch once). A prompt's last chunk is read in a pass of its own: with fewer than 8 rows
it goes through another kernel than behind earlier rows, and a cached prefix may leave
it alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys
from shimmy.engine import library

library.set_deterministic(False)
lib = library.load()
model = lib.Model(sys.argv[1], 0, True, [])
text = " ".join(f"Line {i}: the fox {i * 7 % 13} jumps over dog {i * 3 % 11}." for i in range(80))
full = model.tokenize(text, True, False)
greedy = {"temperature": 0.0, "seed": 0}


def run(engine, tokens, n=6, reuse=True):
    before = engine.n_passes
    reused = engine.start(0, tokens, greedy, [], n, True, 0, reuse)
    out, done = [], False
    while not done:
        for event in engine.step():
            out.extend((x[0], x[2]) for x in event[4] or [])
            done = done or event[2] is not None
    return reused, out, engine.n_passes - before


def engine(rows):
    made = lib.BatchEngine(model, 2048, 2, 2, 64, "f16", 0, True, True, False, rows)
    made.warm_up()
    return made


wide, narrow = engine(256), engine(64)
report = {"rows": [wide.n_ubatch, narrow.n_ubatch], "cases": [],
          "rows_checked": wide.profile_facts()["rows_checked"],
          "reuse_unit": wide.profile_facts()["reuse_unit"], "exact_rows": wide.exact_rows}
_, _, report["passes_1000"] = run(wide, full[:1000], 1, False)
_, _, report["narrow_passes_1000"] = run(narrow, full[:1000], 1, False)
for size, prefix in [(705, 704), (705, 665), (1000, 999), (770, 569)]:
    prompt = full[:size]
    _, by_64_rows, _ = run(narrow, prompt, reuse=False)
    _, cold, _ = run(wide, prompt, reuse=False)
    run(wide, full[:prefix] + [full[5]] * 3, 2, False)  # leaves that prefix cached
    reused, cached, _ = run(wide, prompt)
    report["cases"].append({"size": size, "reused": reused, "cached_as_cold": cached == cold,
                            "as_64_rows": cold == by_64_rows})
# a chat's next turn: the history holds generated cells, reused to the token; the same
# turn asked again reads the rest in the passes it did the first time
run(wide, full[:600], 40, False)
history = wide.cached(0)
turn = history + model.tokenize(" And then? Say more about the fox and the dog.", False, False)
reused, cached, _ = run(wide, turn)
reused_again, again, _ = run(wide, turn)
_, cold, _ = run(wide, turn, reuse=False)
report["next_turn"] = {"history": len(history), "reused": reused, "reused_again": reused_again,
                       "again_as_first": again == cached, "cached_as_cold": cached == cold}
# past the answer's cells no cold start's chunks are kept to: 200 new tokens, one pass
history = wide.cached(0)
reused, _, passes = run(wide, history + full[1:201], 1)
report["long_turn"] = {"history": len(history), "reused": reused, "passes": passes}
print(json.dumps(report))
"""


def test_long_prompts_read_in_wide_passes_and_cached_prefixes_read_as_cold(
        model_path: Path) -> None:
    env = {**os.environ, "GGML_CPU_TILED_MM": "1"}
    result = subprocess.run([sys.executable, "-c", CHILD, str(model_path)], env=env,
                            capture_output=True, text=True, timeout=600,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["rows"] == [256, 64]
    # the fast profile checks rows over f16 too (8 rows after a 64-token lead): its
    # outcome sets the unit of reuse
    assert report["rows_checked"] == 8
    assert report["reuse_unit"] == (1 if report["exact_rows"] else 64)
    # 1,000 tokens: [0, 960) in 256-row passes, then the last chunk alone; 64-row
    # passes read two chunks a step, so 9 steps
    assert report["passes_1000"] == 5
    assert report["narrow_passes_1000"] == 9
    for case in report["cases"]:
        assert case["reused"] > 0, case
        assert report["exact_rows"] or case["reused"] % 64 == 0, case
        assert case["cached_as_cold"], case
        assert case["as_64_rows"], case
    # generated cells are computed one row a step and a cold start reads them many rows
    # a pass: the fast profile reuses them anyway, as llama-server does, so the turn's
    # text equals a cold read's only where the check found that rows round alike
    turn = report["next_turn"]
    assert turn["reused"] == turn["history"], turn
    assert turn["reused_again"] >= turn["history"], turn
    assert turn["again_as_first"], turn
    assert turn["cached_as_cold"] or not report["exact_rows"], turn
    long_turn = report["long_turn"]
    assert long_turn["reused"] == long_turn["history"], long_turn
    assert long_turn["passes"] == 1, long_turn
