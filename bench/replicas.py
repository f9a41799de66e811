"""Aggregate tokens per second of 1 and 2 shimmy replicas behind nginx, in one run.

    .venv/bin/python bench/replicas.py [--setups 1x1 2x1 1x2] [--clients 4] [--rounds 2]

A setup NxT is N replicas of T threads each. For each, this starts N replicas of
``shimmy serve`` (the embedded model) and nginx in front of them with
``deploy/nginx/shimmy.conf`` (as tests/test_balancer.py does; needs Debian's nginx), then
C clients each send ``--requests`` completions without a session header (least
connections), and the generated tokens are summed over the wall time. The setups take
turns round by round, so a drifting machine shifts them alike. On one machine the
replicas share its cores: compare setups with the same total of threads (2x1 and 1x2).

    .venv/bin/python bench/replicas.py --sessions 5

instead times a conversation's second turn (a long system prompt, then a short turn) on
2 replicas: sent with its session key through nginx, which routes it to the replica that
read the first turn, against the same request sent straight to the other replica.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from balancer import Nginx, find_nginx  # noqa: E402  (the test's nginx launcher)

PROMPTS = ["The history of the city begins in the twelfth century, when",
           "Write a short story about a robot who learns to paint.",
           "Here is a recipe for a simple tomato soup. Ingredients:",
           "Explain in simple terms how a bicycle stays upright.",
           "Dear hiring manager, I am writing to apply for the position of",
           "List five tips for getting a good night's sleep:\n1."]


def start_replica(args: argparse.Namespace, threads: int) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shimmy", "serve", "--port", "0", "--ollama-bind", "off",
         "--threads", str(threads), "--parallel", str(args.parallel), "--ctx", str(args.ctx),
         "--keep-alive", "-1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    match = re.search(r"http://[\w.]+:(\d+)", proc.stdout.readline())
    if not match:
        proc.kill()
        raise RuntimeError("a replica did not start")
    port = int(match.group(1))
    post(port, "Hi", 1)  # load the model before measuring
    return proc, port


def post(port: int, prompt: str, max_tokens: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(
            {"model": "default", "prompt": prompt, "max_tokens": max_tokens,
             "temperature": 0, "ignore_eos": True}).encode(),
            headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        body = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"{response.status}: {body}")
        return body["usage"]["completion_tokens"]
    finally:
        conn.close()


def load(port: int, clients: int, requests: int, max_tokens: int) -> float:
    """Generated tokens per second over all clients, through ``port``."""
    totals = [0] * clients

    def client(index: int) -> None:
        for n in range(requests):
            totals[index] += post(port, PROMPTS[(index + n) % len(PROMPTS)], max_tokens)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(totals) / (time.perf_counter() - started)


def measure(args: argparse.Namespace, setup: str, nginx_binary: str, folder: Path) -> float:
    n, threads = (int(part) for part in setup.split("x"))
    replicas = [start_replica(args, threads) for _ in range(n)]
    nginx = Nginx(nginx_binary, folder, [port for _, port in replicas])
    try:
        load(nginx.port, args.clients, 1, 8)  # warm the connections
        return load(nginx.port, args.clients, args.requests, args.max_tokens)
    finally:
        nginx.stop()
        for proc, _ in replicas:
            proc.terminate()
            proc.wait(timeout=30)


SYSTEM = ("You are a careful assistant for a harbour authority. You answer questions about "
          "ships, berths, tides, cargo and safety rules, briefly and precisely. ") * 24


def chat(port: int, messages: list[dict], session: str) -> tuple[float, int, str]:
    """Seconds, cached prompt tokens and the replica that answered (X-Shimmy-Replica)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    try:
        conn.request("POST", "/v1/chat/completions", body=json.dumps(
            {"model": "default", "messages": messages, "max_tokens": 8,
             "temperature": 0}).encode(),
            headers={"Content-Type": "application/json", "X-Session-Id": session})
        response = conn.getresponse()
        body = json.loads(response.read())
        replica = response.getheader("x-shimmy-replica", "").split(",")[-1].strip()
    finally:
        conn.close()
    cached = body["usage"]["prompt_tokens_details"]["cached_tokens"]
    return time.perf_counter() - started, cached, replica


def sessions(args: argparse.Namespace, nginx_binary: str, folder: Path) -> None:
    replicas = [start_replica(args, 1) for _ in range(2)]
    nginx = Nginx(nginx_binary, folder, [port for _, port in replicas])
    sticky, cold = [], []
    try:
        for n in range(args.sessions):
            session = f"bench-{n}-{time.time_ns()}"
            messages = [{"role": "system", "content": f"Conversation {session}. {SYSTEM}"},
                        {"role": "user", "content": "Which berth is free?"}]
            _, _, first = chat(nginx.port, messages, session)
            messages += [{"role": "assistant", "content": "Berth 4."},
                         {"role": "user", "content": "And tomorrow?"}]
            other = next(port for _, port in replicas if not first.endswith(f":{port}"))
            seconds, cached, _ = chat(other, messages, session)  # the other replica: cold
            cold.append(seconds)
            seconds, cached, replica = chat(nginx.port, messages, session)
            assert replica == first and cached > 0, (replica, first, cached)
            sticky.append(seconds)
            print(f"session {n + 1}: cold {cold[-1]:.2f} s, sticky {seconds:.2f} s "
                  f"({cached} prompt tokens cached)", flush=True)
    finally:
        nginx.stop()
        for proc, _ in replicas:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"second turn, median of {args.sessions}: on the replica of the first turn "
          f"{statistics.median(sticky):.2f} s, on the other {statistics.median(cold):.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", nargs="+", default=["1x1", "2x1", "1x2"],
                        help="REPLICASxTHREADS (threads per replica)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=4, help="per client and round")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--parallel", type=int, default=4, help="slots per replica")
    parser.add_argument("--ctx", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sessions", type=int, default=0,
                        help="time this many conversations' second turns instead")
    args = parser.parse_args()
    nginx_binary = find_nginx()
    if nginx_binary is None:
        sys.exit("nginx is not installed (apt-get install nginx)")
    if args.sessions:
        with tempfile.TemporaryDirectory() as tmp:
            sessions(args, nginx_binary, Path(tmp))
        return
    figures: dict[str, list[float]] = {setup: [] for setup in args.setups}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for setup in args.setups:
                rate = measure(args, setup, nginx_binary, Path(tmp) / f"nginx-{round_}-{setup}")
                figures[setup].append(rate)
                print(f"round {round_ + 1}: {setup}: {rate:.1f} tok/s", flush=True)
    print(f"\n{args.clients} clients, {args.max_tokens} tokens a request, "
          f"--parallel {args.parallel} per replica; REPLICASxTHREADS: median tok/s (rounds)")
    for setup, rates in figures.items():
        print(f"{setup}: {statistics.median(rates):.1f} ({', '.join(f'{r:.1f}' for r in rates)})")


if __name__ == "__main__":
    main()
