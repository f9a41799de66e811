"""Benchmark shimmy against llama-server and llama-cpp-python's server, in one run.

    ./bench/build_peers.sh             # once: builds the peers into bench/.cache
    .venv/bin/python bench/run.py      # measures and prints (--out FILE: also a report)

Every server gets the same model (the embedded default), threads, per-slot context and
slots, and runs alone on the machine, on the same port range; the servers take turns
figure by figure, each started afresh for its turn. The client is this process (standard
library only). Figures are medians over repeats and starts; the ratios shimmy/peer from
one run are what counts, since the machine's speed drifts.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
LLAMA_BIN = CACHE / "llama.cpp-build" / "bin"
WORDS = ["river", "mountain", "ocean", "forest", "desert", "city", "village", "garden",
         "bridge", "tower", "castle", "harbor", "valley", "island", "meadow", "canyon",
         "glacier", "volcano", "prairie", "lagoon"]
# what decoding is measured on: everyday requests, so the generated text is what a user
# would get (random words make this model repeat one token, which flatters any server
# that guesses ahead)
SHORT_PROMPTS = 5  # 8-word prompts per first-token measurement
PROMPTS = [
    "The history of the city begins in the twelfth century, when",
    "Write a short story about a robot who learns to paint.",
    "Here is a recipe for a simple tomato soup. Ingredients:",
    "Q: What is the capital of France?\nA:",
    "def fibonacci(n):\n",
    "The three most important inventions of the nineteenth century were",
    "Explain in simple terms how a bicycle stays upright.",
    "Dear hiring manager, I am writing to apply for the position of",
    "List five tips for getting a good night's sleep:\n1.",
    "The weather forecast for tomorrow says",
    "Summary of the meeting held on Monday:",
    "Once upon a time, in a small village by the sea, there lived",
    "How do I reverse a list in Python?",
    "The main differences between cats and dogs as pets are",
    "Translate into French: Good morning, how are you today?",
    "A healthy breakfast should include",
]


@dataclass
class Server:
    name: str
    command: list[str]
    ready_path: str
    extra: dict = field(default_factory=dict)  # body fields that force exactly max_tokens
    process: subprocess.Popen | None = None
    port: int = 0


@dataclass
class Figures:
    values: dict[str, float] = field(default_factory=dict)

    def __setitem__(self, key: str, value: float) -> None:
        self.values[key] = value

    def get(self, key: str) -> float | None:
        return self.values.get(key)


def cpu_has_amx() -> bool:
    """llama.cpp's repacked weights die with SIGILL on AMX CPUs (docs/ARCHITECTURE.md):
    only there do the peers run with repacking off."""
    with open("/proc/cpuinfo") as info:
        return any(line.startswith("flags") and " amx_int8" in line for line in info)


def no_repack() -> list[str]:
    return ["--no-repack"] if cpu_has_amx() else []


def servers(args: argparse.Namespace, model: Path, port: int) -> list[Server]:
    t, ctx, slots = str(args.threads), args.ctx, args.parallel
    shimmy = Server("shimmy", [str(ROOT / ".venv/bin/shimmy"), "serve", "--port", str(port),
                               "--model-path", str(model), "--threads", t, "--ctx", str(ctx),
                               "--parallel", str(slots), *args.shimmy_args], "/api/health",
                    {"ignore_eos": True})
    llama = Server("llama-server", [str(LLAMA_BIN / "llama-server"), "-m", str(model),
                                    "--port", str(port), "-t", t, "-tb", t,
                                    "-c", str(ctx * slots), "-np", str(slots), *no_repack(),
                                    "--no-webui"], "/health", {"ignore_eos": True})
    ngram = Server("llama-server-ngram",
                   [*llama.command, "--spec-type", "ngram-simple", "--spec-ngram-simple-size-n",
                    "3", "--spec-ngram-simple-size-m", "3"], "/health", {"ignore_eos": True})
    lcp = Server("llama-cpp-python", [str(CACHE / "peer-venv/bin/python"),
                                      str(ROOT / "bench/lcp_server.py"), "--model", str(model),
                                      "--port", str(port), "--n_threads", t,
                                      "--n_threads_batch", t, "--n_ctx", str(ctx)],
                 "/v1/models", {"logit_bias": {"1": -100, "106": -100}})
    chosen = [s for s in (shimmy, llama, ngram, lcp) if s.name in args.servers]
    for server in chosen:
        server.port = port
    return chosen


# ---------------------------------------------------------------- process handling

def start(server: Server) -> tuple[float, float]:
    """Start a server; seconds until its ready route answers 200, and its RSS then (MB)."""
    started = time.perf_counter()
    server.process = subprocess.Popen(server.command, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
    deadline = started + 120
    while time.perf_counter() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}")
        try:
            status, _ = call(server, "GET", server.ready_path, timeout=1)
            if status == 200:
                return time.perf_counter() - started, rss_mb(server)
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"{server.name} did not become ready")


def stop(server: Server) -> None:
    if server.process is not None:
        server.process.terminate()
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
        server.process = None
    time.sleep(1)  # let the port and the cores settle before the next server


def rss_mb(server: Server) -> float:
    with open(f"/proc/{server.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


# ---------------------------------------------------------------- HTTP client

def call(server: Server, method: str, path: str, body: dict | None = None,
         timeout: float = 300) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, payload, {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data.startswith(b"{") else {}
    finally:
        conn.close()


def stream(server: Server, prompt: str, max_tokens: int) -> list[float]:
    """Arrival times of the streamed text chunks, from the moment the request was sent."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            **server.extra}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
    try:
        sent = time.perf_counter()
        conn.request("POST", "/v1/completions", json.dumps(body).encode(),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        arrivals = []
        for line in response:
            if line.startswith(b"data: {") and b'"text":""' not in line.replace(b" ", b""):
                arrivals.append(time.perf_counter() - sent)
        return arrivals
    finally:
        conn.close()


def complete(server: Server, prompt: str, max_tokens: int) -> tuple[float, int]:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **server.extra}
    sent = time.perf_counter()
    status, answer = call(server, "POST", "/v1/completions", body)
    if status != 200:
        raise RuntimeError(f"{server.name}: HTTP {status}: {answer}")
    return time.perf_counter() - sent, answer["usage"]["completion_tokens"]


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


# ---------------------------------------------------------------- measurements

def measure_all(chosen: list[Server], args: argparse.Namespace,
                rng: random.Random) -> dict[str, Figures]:
    """Every figure of every server, one server running at a time.

    The machine's speed drifts over minutes, so the servers take turns figure by figure
    (each started afresh for its turn) rather than one after the other for the whole
    run: a ratio then compares measurements made a minute apart, not ten.
    """
    samples: dict[str, dict[str, list[float]]] = {s.name: {} for s in chosen}

    def take_turns(what: Callable[[Server], dict[str, float]]) -> None:
        for server in chosen:
            print(f"  {server.name}", flush=True)
            for key, value in session(server, what).items():
                samples[server.name].setdefault(key, []).append(value)

    # every server of a turn gets the same prompts: each draws from a copy of one generator
    for _ in range(args.repeats):
        seed = rng.random()
        take_turns(lambda server, seed=seed: single_stream(server, random.Random(seed), args))
    for _ in range(args.load_repeats):
        for clients in args.clients:
            seed = rng.random()
            take_turns(lambda server, n=clients, seed=seed: under_load(server, n, args,
                                                                       random.Random(seed)))
    seed = rng.random()
    take_turns(lambda server: multi_turn(server, random.Random(seed)))
    results = {}
    for name, values in samples.items():
        figures = Figures()
        for key, series in values.items():
            figures[key] = (max if key == "rss_load_mb" else statistics.median)(series)
        results[name] = figures
    return results


def session(server: Server, what: Callable[[Server], dict[str, float]]) -> dict[str, float]:
    """Start ``server``, load its model, measure ``what``, stop it; with the start-up
    figures of this start."""
    ready, rss_idle = start(server)
    try:
        t0 = time.perf_counter()
        complete(server, "Hello", 1)  # loads the model where loading is lazy
        figures = {"start_to_ready_s": ready, "rss_idle_mb": rss_idle,
                   "first_answer_s": ready + time.perf_counter() - t0,
                   "rss_loaded_mb": rss_mb(server)}
        figures.update(what(server))
        return figures
    finally:
        stop(server)


def single_stream(server: Server, rng: random.Random,
                  args: argparse.Namespace) -> dict[str, float]:
    """Decode speed over ``--decode-prompts`` prompts (all their tokens after each first
    one, over all that time), and the two first-token times: the short one a median of
    ``SHORT_PROMPTS`` prompts, since one takes about as long as the machine's jitter."""
    tokens = seconds = 0.0
    for prompt in rng.sample(PROMPTS, args.decode_prompts):
        arrivals = stream(server, prompt, args.tokens)
        tokens += args.tokens - 1
        seconds += arrivals[-1] - arrivals[0]
    return {"decode_tok_s": tokens / seconds,
            "ttft_short_ms": statistics.median(stream(server, words(rng, 8), 1)[0]
                                               for _ in range(SHORT_PROMPTS)) * 1000,
            "ttft_long_ms": stream(server, words(rng, 1000), 1)[0] * 1000}


def under_load(server: Server, clients: int, args: argparse.Namespace,
               rng: random.Random) -> dict[str, float]:
    rate, p50, p95, peak = concurrent(server, clients, args, rng)
    return {f"agg_tok_s_{clients}": rate, f"p50_s_{clients}": p50,
            f"p95_s_{clients}": p95, "rss_load_mb": peak}


def concurrent(server: Server, clients: int, args: argparse.Namespace,
               rng: random.Random) -> tuple[float, float, float, float]:
    prompts = [[rng.choice(PROMPTS) for _ in range(args.requests)] for _ in range(clients)]
    latencies: list[float] = []
    tokens = [0]
    lock = threading.Lock()

    def client(own: list[str]) -> None:
        for prompt in own:
            latency, n = complete(server, prompt, args.concurrent_tokens)
            with lock:
                latencies.append(latency)
                tokens[0] += n

    peak = [0.0]
    done = threading.Event()

    def sample_rss() -> None:
        while not done.wait(0.1):
            peak[0] = max(peak[0], rss_mb(server))

    sampler = threading.Thread(target=sample_rss)
    sampler.start()
    wall = run_together([threading.Thread(target=client, args=(p,)) for p in prompts])
    done.set()
    sampler.join()
    latencies.sort()
    p95 = latencies[min(len(latencies) - 1, int(round(0.95 * (len(latencies) - 1))))]
    return tokens[0] / wall, statistics.median(latencies), p95, peak[0]


def run_together(threads: list[threading.Thread]) -> float:
    """Start the threads at once, wait for them all; the seconds that took."""
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def multi_turn(server: Server, rng: random.Random) -> dict[str, float]:
    """Time to first token of a chat's first turn, and of the second (the first turn's
    prompt and answer are its prefix)."""
    turn1 = "A story about " + words(rng, 1000)
    first = stream(server, turn1, 1)[0]
    _, answer = call(server, "POST", "/v1/completions",
                     {"prompt": turn1, "max_tokens": 32, "temperature": 0, **server.extra})
    turn2 = turn1 + answer["choices"][0]["text"] + "\nWhat happened next? " + words(rng, 20)
    second = stream(server, turn2, 1)[0]
    return {"turn1_ttft_ms": first * 1000, "turn2_ttft_ms": second * 1000}


def llama_bench(args: argparse.Namespace, model: Path) -> Figures:
    command = [str(LLAMA_BIN / "llama-bench"), "-m", str(model), "-t", str(args.threads),
               "-p", "128", "-n", str(args.tokens), "-r", str(args.repeats), "--repack",
               "0" if cpu_has_amx() else "1", "-o", "json"]
    rows = json.loads(subprocess.run(command, capture_output=True, text=True,
                                     check=True).stdout)
    figures = Figures()
    for row in rows:
        key = "bench_tg_tok_s" if row["n_gen"] else "bench_pp_tok_s"
        figures[key] = row["avg_ts"]
    return figures


# ---------------------------------------------------------------- report

ROWS: list[tuple[str, str, Callable[[float], str], bool]] = [
    # key, label, format, higher is better
    ("decode_tok_s", "single-stream decode (tok/s)", "{:.1f}".format, True),
    ("ttft_short_ms", "TTFT, 8-word prompt (ms)", "{:.0f}".format, False),
    ("ttft_long_ms", "TTFT, 1,000-word prompt (ms)", "{:.0f}".format, False),
    ("agg_tok_s_1", "aggregate, 1 client (tok/s)", "{:.1f}".format, True),
    ("agg_tok_s_4", "aggregate, 4 clients (tok/s)", "{:.1f}".format, True),
    ("agg_tok_s_8", "aggregate, 8 clients (tok/s)", "{:.1f}".format, True),
    ("p50_s_4", "latency p50, 4 clients (s)", "{:.2f}".format, False),
    ("p95_s_4", "latency p95, 4 clients (s)", "{:.2f}".format, False),
    ("p50_s_8", "latency p50, 8 clients (s)", "{:.2f}".format, False),
    ("p95_s_8", "latency p95, 8 clients (s)", "{:.2f}".format, False),
    ("turn1_ttft_ms", "chat turn 1 TTFT (ms)", "{:.0f}".format, False),
    ("turn2_ttft_ms", "chat turn 2 TTFT (ms)", "{:.0f}".format, False),
    ("rss_idle_mb", "RSS when ready, before a request (MB)", "{:.0f}".format, False),
    ("rss_loaded_mb", "RSS with the model loaded (MB)", "{:.0f}".format, False),
    ("rss_load_mb", "peak RSS under load (MB)", "{:.0f}".format, False),
    ("start_to_ready_s", "process start to ready route (s)", "{:.3f}".format, False),
    ("first_answer_s", "process start to first answer (s)", "{:.3f}".format, False),
]


def table(results: dict[str, Figures], bench: Figures | None) -> str:
    names = list(results)
    peers = [n for n in names if n != "shimmy"]
    head = ["figure", *names, *(f"shimmy/{p}" for p in peers)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label, fmt, _ in ROWS:
        cells = [fmt(v) if (v := results[n].get(key)) is not None else "–" for n in names]
        ratios = []
        for peer in peers:
            ours, theirs = results.get("shimmy", Figures()).get(key), results[peer].get(key)
            ratios.append(f"{ours / theirs:.2f}" if ours and theirs else "–")
        lines.append("| " + " | ".join([label, *cells, *ratios]) + " |")
    text = "\n".join(lines)
    if bench is not None:
        tg, pp = bench.get("bench_tg_tok_s"), bench.get("bench_pp_tok_s")
        ours = results.get("shimmy", Figures()).get("decode_tok_s")
        text += (f"\n\nllama-bench (the ceiling, no HTTP): tg {tg:.1f} tok/s, "
                 f"pp128 {pp:.1f} tok/s")
        if ours:
            text += f"; shimmy's single-stream decode is {ours / tg:.2f}× its tg."
    return text


def machine() -> str:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def write_report(path: Path, text: str, command: str, model: Path) -> None:
    path.write_text(
        "# Benchmarks\n\n"
        f"Reproduce with:\n\n```sh\n./bench/build_peers.sh\n{command}\n```\n\n"
        f"Machine: {machine()}. Model: {model.name}. "
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n"
        + text + "\n")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=4096, help="context per slot")
    parser.add_argument("--parallel", type=int, default=8, help="slots")
    parser.add_argument("--repeats", type=int, default=5, help="single-stream repeats")
    parser.add_argument("--load-repeats", type=int, default=3,
                        help="repeats of each concurrent-client measurement")
    parser.add_argument("--tokens", type=int, default=128, help="tokens for decode speed")
    parser.add_argument("--decode-prompts", type=int, default=4,
                        help="prompts per decode measurement, out of the 16 in PROMPTS")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--requests", type=int, default=3, help="requests per client")
    parser.add_argument("--concurrent-tokens", type=int, default=64)
    parser.add_argument("--port", type=int, default=11480)
    parser.add_argument("--servers", nargs="+",
                        default=["shimmy", "llama-server", "llama-cpp-python"])
    parser.add_argument("--no-llama-bench", action="store_true")
    parser.add_argument("--shimmy-args", type=shlex.split, default=[], metavar="ARGS",
                        help="more options for shimmy serve, e.g. '--kv-cache-type bf16'")
    parser.add_argument("--model", type=Path, default=None,
                        help="a GGUF file (default: the embedded model)")
    parser.add_argument("--out", type=Path, default=None,
                        help="also write the table and the command to this file")
    return parser.parse_args(argv)


def chosen_model(args: argparse.Namespace) -> Path:
    if args.model is not None:
        return args.model
    from shimmy.models.embedded import embedded_model_path

    return embedded_model_path()


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    model = chosen_model(args)
    rng = random.Random(7)
    results = measure_all(servers(args, model, args.port), args, rng)
    bench = None if args.no_llama_bench else llama_bench(args, model)
    text = table(results, bench)
    print(text)
    command = ".venv/bin/python bench/run.py " + shlex.join(argv)
    if args.out is not None:
        write_report(args.out, text, command.strip(), model)
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
