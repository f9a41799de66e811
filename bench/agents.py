"""What coding agents and long prompts cost: shimmy against llama-server, in one run.

    ./bench/build_peers.sh                      # once
    .venv/bin/python bench/agents.py            # prints a table of figures and ratios

Figures, each server started afresh for its turn and taking turns figure by figure:
- time to first token of new prompts (never sent before) of about 1k, 4k and 16k tokens;
- one agent's session: a long system prompt and tool schemas, then turns that each add
  the answer, a tool result and a user message (a few hundred tokens): first turn's and
  later turns' time to first token;
- four agents at once, sharing one system prompt: total generated tok/s and the later
  turns' median time to first token;
- resident memory when ready, with the model loaded and after the run.

Each figure's first token is timed on a loaded model: shimmy loads one on its first
request (a one-token request goes first), llama-server before its ready route answers.

Same threads, slots and total cells on both sides; llama-server runs with its defaults
(``-t``/``-tb``, ``-c`` = slots x per-slot context, ``-np``). Prompts go through
``/v1/completions`` as text, so both servers read the very same tokens.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import shlex
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (  # noqa: E402
    LLAMA_BIN,
    ROOT,
    WORDS,
    Server,
    call,
    chosen_model,
    rss_mb,
    run_together,
    start,
    stop,
)

TOOLS = ["read_file(path)", "write_file(path, text)", "run(command)", "search(pattern)",
         "list_dir(path)", "edit(path, old, new)", "fetch(url)", "ask_user(question)"]


def text_of(rng: random.Random, tokens: int) -> str:
    """Prose of about ``tokens`` tokens (the embedded model's tokenizer reads these words
    as a little over one token each)."""
    words = [rng.choice(WORDS) for _ in range(int(tokens * 0.8))]
    return " ".join(words)


def system_prompt(rng: random.Random, tokens: int) -> str:
    schemas = "\n".join(f"- {tool}: {text_of(rng, 40)}" for tool in TOOLS)
    return f"You are a coding agent. Tools:\n{schemas}\nRules: {text_of(rng, tokens - 500)}\n"


def first_token(server: Server, prompt: str) -> float:
    """Seconds until the first streamed chunk with a choice (its token may be blank)."""
    body = {"prompt": prompt, "max_tokens": 1, "temperature": 0, "stream": True}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=1800)
    try:
        sent = time.perf_counter()
        conn.request("POST", "/v1/completions", json.dumps(body).encode(),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"{server.name}: HTTP {response.status}: {response.read()!r}")
        for line in response:
            if line.startswith(b"data: {") and b'"choices"' in line:
                return time.perf_counter() - sent
        raise RuntimeError(f"{server.name}: the stream ended with no choice")
    finally:
        conn.close()


def answer(server: Server, prompt: str, tokens: int) -> tuple[str, float, int]:
    """The answer's text, its time to first token and its decode speed's token count."""
    body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0, **server.extra}
    sent = time.perf_counter()
    status, reply = call(server, "POST", "/v1/completions", body, timeout=1800)
    if status != 200:
        raise RuntimeError(f"{server.name}: HTTP {status}: {reply}")
    return reply["choices"][0]["text"], time.perf_counter() - sent, \
        reply["usage"]["completion_tokens"]


def new_prompts(server: Server, rng: random.Random, sizes: list[int]) -> dict[str, float]:
    return {f"ttft_new_{size}": first_token(server, text_of(rng, size)) for size in sizes}


def agent_session(server: Server, rng: random.Random, system: str, turns: int,
                  tokens: int) -> tuple[float, list[float]]:
    """First turn's time to first token, and the later turns'."""
    prompt = system + "User: fix the failing test.\nAssistant:"
    firsts: list[float] = []
    for _ in range(turns):
        firsts.append(first_token(server, prompt))
        text, _, _ = answer(server, prompt, tokens)
        result = text_of(rng, 250)
        prompt += f"{text}\nTool result: {result}\nUser: go on.\nAssistant:"
    return firsts[0], firsts[1:]


def one_agent(server: Server, rng: random.Random, args: argparse.Namespace) -> dict[str, float]:
    first, later = agent_session(server, rng, system_prompt(rng, args.system), args.turns,
                                 args.answer)
    return {"agent_first_ttft": first, "agent_later_ttft": statistics.median(later)}


def four_agents(server: Server, rng: random.Random, args: argparse.Namespace
                ) -> dict[str, float]:
    system = system_prompt(rng, args.shared_system)
    seeds = [rng.random() for _ in range(args.agents)]
    later: list[float] = []
    generated = [0]
    lock = threading.Lock()

    def agent(seed: float) -> None:
        own = random.Random(seed)
        prompt = system + f"User: task {seed:.6f}: {text_of(own, 40)}\nAssistant:"
        for _ in range(args.turns):
            text, seconds, n = answer(server, prompt, args.answer)
            with lock:
                generated[0] += n
            prompt += f"{text}\nTool result: {text_of(own, 250)}\nUser: go on.\nAssistant:"
        with lock:
            later.append(first_token(server, prompt))

    wall = run_together([threading.Thread(target=agent, args=(seed,)) for seed in seeds])
    return {f"agents{args.agents}_tok_s": generated[0] / wall,
            f"agents{args.agents}_later_ttft": statistics.median(later),
            "rss_after_mb": rss_mb(server)}


def servers(args: argparse.Namespace, model: Path) -> list[Server]:
    t, ctx, slots, port = str(args.threads), args.ctx, args.parallel, str(args.port)
    base = [str(ROOT / ".venv/bin/shimmy"), "serve", "--port", port, "--model-path",
            str(model), "--threads", t, "--ctx", str(ctx), "--parallel", str(slots),
            "--ollama-bind", "off", *args.shimmy_args]
    found = {
        "shimmy": Server("shimmy", base, "/api/health"),
        "shimmy-deterministic": Server("shimmy-deterministic", [*base, "--deterministic"],
                                       "/api/health"),
        "llama-server": Server("llama-server", [
            str(LLAMA_BIN / "llama-server"), "-m", str(model), "--port", port, "-t", t,
            "-tb", t, "-c", str(ctx * slots), "-np", str(slots), "--no-webui",
            *args.llama_args], "/health"),
    }
    chosen = [found[name] for name in args.servers]
    for server in chosen:
        server.port = args.port
    return chosen


def measure(chosen: list[Server], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {s.name: {} for s in chosen}
    rng = random.Random(11)
    figures = {
        "new": lambda server, seed: new_prompts(server, random.Random(seed), args.new),
        "agent": lambda server, seed: one_agent(server, random.Random(seed), args),
        "agents": lambda server, seed: four_agents(server, random.Random(seed), args),
    }
    for name, figure in figures.items():
        seed = rng.random()  # drawn for every figure, so a figure's prompts never change
        if name not in args.figures:
            continue
        for server in chosen:
            print(f"  {server.name}", flush=True)
            _, ready_rss = start(server)
            try:
                results[server.name].setdefault("rss_ready_mb", ready_rss)
                # shimmy loads a model on its first request, llama-server before it is
                # ready: each first token is timed on a loaded model, as a running
                # server reads a new prompt
                answer(server, "Hello", 1)
                results[server.name].setdefault("rss_loaded_mb", rss_mb(server))
                results[server.name].update(figure(server, seed))
                results[server.name]["rss_after_mb"] = max(
                    results[server.name].get("rss_after_mb", 0), rss_mb(server))
            finally:
                stop(server)
    return results


def table(results: dict[str, dict[str, float]]) -> str:
    names = list(results)
    peer = "llama-server" if "llama-server" in names else None
    head = ["figure", *names, *([f"{n}/{peer}" for n in names if n != peer] if peer else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = list(dict.fromkeys(k for figures in results.values() for k in figures))
    for key in keys:
        cells = [f"{v:.2f}" if (v := results[n].get(key)) is not None else "–" for n in names]
        ratios = []
        if peer:
            theirs = results[peer].get(key)
            ratios = [f"{results[n][key] / theirs:.2f}" if theirs and key in results[n]
                      else "–" for n in names if n != peer]
        lines.append("| " + " | ".join([key, *cells, *ratios]) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=20480, help="context per slot")
    parser.add_argument("--parallel", type=int, default=4, help="slots")
    parser.add_argument("--new", type=int, nargs="+", default=[1000, 4000, 16000],
                        help="sizes of the new prompts, in tokens")
    parser.add_argument("--system", type=int, default=16000,
                        help="one agent's system prompt and tools, in tokens")
    parser.add_argument("--shared-system", type=int, default=4000,
                        help="the system prompt the concurrent agents share, in tokens")
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--answer", type=int, default=32, help="tokens per answer")
    parser.add_argument("--port", type=int, default=11490)
    parser.add_argument("--servers", nargs="+", default=["shimmy", "llama-server"])
    parser.add_argument("--figures", nargs="+", choices=["new", "agent", "agents"],
                        default=["new", "agent", "agents"],
                        help="new prompts, one agent's session, the concurrent agents")
    parser.add_argument("--model", type=Path, default=None,
                        help="a GGUF file (default: the embedded model)")
    parser.add_argument("--shimmy-args", type=shlex.split, default=[], metavar="ARGS",
                        help="more arguments for shimmy serve, e.g. --flash-attn")
    parser.add_argument("--llama-args", type=shlex.split, default=[], metavar="ARGS",
                        help="more llama-server options (say why in the report)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    model = chosen_model(args)
    print(f"model: {model.name}")
    print(table(measure(servers(args, model), args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
