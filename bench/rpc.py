"""Tokens per second of a model split over 0 to 3 RPC workers on loopback (docs/RPC.md).

    .venv/bin/python bench/rpc.py [--workers 0,1,2,3] [--runs 3] [--threads 1]

Each row runs ``shimmy bench --json --draft 0`` (one slot, a 128-token prompt, 64
generated tokens; no guessing ahead, which the load-time check may allow for a split
model and not for the local one, see docs/RPC.md) with every layer on the workers
(``--gpu-layers`` all), the workers started fresh, each ``shimmy rpc-worker --threads N``
on its own port; 0 workers is the model on this CPU alone. Rounds alternate the rows, so
that a busy machine slows every row alike, and the median of each row's medians is
printed. Loopback measures the protocol's own cost (a step's activations and the replies
travel between processes once per worker), not a network's.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shimmy.engine import rpc  # noqa: E402


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


def start_worker(threads: int) -> tuple[subprocess.Popen[bytes], str]:
    endpoint = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen([sys.executable, "-m", "shimmy", "rpc-worker", "--bind", endpoint,
                             "--threads", str(threads)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            rpc.check_worker(endpoint, timeout=2)
            return proc, endpoint
        except rpc.RpcError:
            time.sleep(0.1)
    raise SystemExit(f"worker at {endpoint} did not start")


def bench(n_workers: int, args: argparse.Namespace) -> dict[str, float]:
    workers = [start_worker(args.threads) for _ in range(n_workers)]
    try:
        command = [sys.executable, "-m", "shimmy", "bench", "--json", "--runs", str(args.runs),
                   "--prompt-tokens", "128", "--gen-tokens", "64", "--threads",
                   str(args.threads), "--draft", "0"]
        if workers:
            command += ["--rpc", ",".join(endpoint for _, endpoint in workers)]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
        return json.loads(result.stdout)["median"]
    finally:
        for proc, _ in workers:
            proc.terminate()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="0,1,2,3", help="rows: workers per row")
    parser.add_argument("--runs", type=int, default=3, help="runs per row and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over the rows")
    parser.add_argument("--threads", type=int, default=1, help="threads of each process")
    args = parser.parse_args()
    rows = [int(n) for n in args.workers.split(",")]
    results: dict[int, list[dict[str, float]]] = {n: [] for n in rows}
    for _ in range(args.rounds):
        for n in rows:
            results[n].append(bench(n, args))
    print(f"{'workers':>7} {'prompt tok/s':>13} {'gen tok/s':>10} {'ttft ms':>8}")
    for n in rows:
        median = {key: statistics.median(r[key] for r in results[n])
                  for key in ("prompt_tps", "gen_tps", "ttft_ms")}
        print(f"{n:>7} {median['prompt_tps']:>13.1f} {median['gen_tps']:>10.1f} "
              f"{median['ttft_ms']:>8.1f}")


if __name__ == "__main__":
    main()
