#!/usr/bin/env python3
"""Record what a coding-agent CLI sends to its model server on its first turn.

    scripts/capture_agent_request.py claude tests/data/agents/claude-code-first-request.json
    scripts/capture_agent_request.py codex tests/data/agents/codex-first-request.json

A loopback-only HTTP server records every request (method, path, headers, JSON body)
and answers like a tiny model that says "Hello." (Anthropic Messages and OpenAI
Responses streams, token counts, an empty model list); everything else gets 404. The
CLI (installed by tests/agent_clis.py) runs once against it with a private HOME. The
first model request is written out sanitized, with the requests before and after it
listed (method and path) under "other_requests".
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import agent_clis  # noqa: E402

_UUID = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                   r"[0-9a-fA-F]{12}\b")
MODEL_PATHS = ("/v1/messages", "/v1/responses")
# Headers that differ from run to run or machine to machine.
VOLATILE_HEADERS = {"host", "content-length", "x-claude-code-session-id", "session_id",
                    "session-id", "x-client-request-id", "conversation_id", "traceparent"}


class Recorder(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.records: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: Recorder
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_HEAD(self) -> None:  # noqa: N802
        self._record(None)
        self._send(200, b"", "text/plain")

    def do_GET(self) -> None:  # noqa: N802
        self._record(None)
        path = self.path.split("?")[0]
        if path.endswith("/models"):
            self._json({"object": "list", "data": [], "models": []})
        else:
            self._json({"error": {"type": "not_found", "message": "not here"}}, 404)

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = raw.decode(errors="replace")
        self._record(body)
        path = self.path.split("?")[0]
        if path.endswith("/count_tokens"):
            self._json({"input_tokens": 100})
        elif path.endswith("/messages"):
            self._messages(body)
        elif path.endswith("/responses"):
            self._responses(body)
        else:
            self._json({"error": {"type": "not_found", "message": "not here"}}, 404)

    def _record(self, body: Any) -> None:
        with self.server.lock:
            self.server.records.append({"method": self.command, "path": self.path,
                                        "headers": dict(self.headers.items()), "body": body})

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _json(self, value: Any, status: int = 200) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _sse(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        data = "".join(f"event: {name}\ndata: {json.dumps(payload)}\n\n"
                       for name, payload in events).encode()
        self._send(200, data, "text/event-stream")

    def _messages(self, body: Any) -> None:
        model = body.get("model", "model") if isinstance(body, dict) else "model"
        message = {"id": "msg_1", "type": "message", "role": "assistant", "model": model,
                   "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": 100, "output_tokens": 1}}
        if not (isinstance(body, dict) and body.get("stream")):
            self._json({**message, "content": [{"type": "text", "text": "Hello."}],
                        "stop_reason": "end_turn"})
            return
        self._sse([
            ("message_start", {"type": "message_start", "message": message}),
            ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": "Hello."}}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta",
                               "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                               "usage": {"output_tokens": 2}}),
            ("message_stop", {"type": "message_stop"}),
        ])

    def _responses(self, body: Any) -> None:
        model = body.get("model", "model") if isinstance(body, dict) else "model"
        text_item = {"id": "msg_1", "type": "message", "role": "assistant",
                     "status": "completed",
                     "content": [{"type": "output_text", "text": "Hello.", "annotations": []}]}
        base = {"id": "resp_1", "object": "response", "created_at": int(time.time()),
                "model": model, "status": "in_progress", "output": []}
        done = {**base, "status": "completed", "output": [text_item],
                "usage": {"input_tokens": 100, "output_tokens": 2, "total_tokens": 102,
                          "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens_details": {"reasoning_tokens": 0}}}
        events = [
            ("response.created", {"response": base}),
            ("response.in_progress", {"response": base}),
            ("response.output_item.added", {"output_index": 0,
                                            "item": {**text_item, "status": "in_progress",
                                                     "content": []}}),
            ("response.content_part.added", {"output_index": 0, "item_id": "msg_1",
                                             "content_index": 0,
                                             "part": {"type": "output_text", "text": "",
                                                      "annotations": []}}),
            ("response.output_text.delta", {"output_index": 0, "item_id": "msg_1",
                                            "content_index": 0, "delta": "Hello."}),
            ("response.output_text.done", {"output_index": 0, "item_id": "msg_1",
                                           "content_index": 0, "text": "Hello."}),
            ("response.content_part.done", {"output_index": 0, "item_id": "msg_1",
                                            "content_index": 0,
                                            "part": text_item["content"][0]}),
            ("response.output_item.done", {"output_index": 0, "item": text_item}),
            ("response.completed", {"response": done}),
        ]
        self._sse([(name, {"type": name, "sequence_number": number, **payload})
                   for number, (name, payload) in enumerate(events)])


def run_cli(which: str, url: str, home: Path, timeout: float) -> subprocess.CompletedProcess:
    workdir = home / "project"
    workdir.mkdir(parents=True, exist_ok=True)
    if which == "claude":
        executable = agent_clis.install(*agent_clis.CLAUDE_CODE)
        command = [str(executable), *agent_clis.claude_args("Say hello", "some-model")]
        env = agent_clis.claude_env(url, home, "some-model")
    else:
        executable = agent_clis.install(*agent_clis.CODEX)
        command = [str(executable), *agent_clis.codex_args("Say hello", workdir)]
        env = agent_clis.codex_env(url, home, "some-model")
    return subprocess.run(command, env=env, cwd=workdir, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def sanitize(value: Any, replacements: list[tuple[str, str]]) -> Any:
    if isinstance(value, str):
        for old, new in replacements:
            value = value.replace(old, new)
        return value
    if isinstance(value, list):
        return [sanitize(item, replacements) for item in value]
    if isinstance(value, dict):
        return {key: sanitize(item, replacements) for key, item in value.items()}
    return value


def placeholders(home: Path) -> list[tuple[str, str]]:
    """Machine-specific strings, longest first, and what stands in for them.

    The CLI runs with a temporary HOME, so user and host names reach the request only
    inside these paths (Claude Code also spells the project path with dashes).
    """
    workdir = home / "project"
    pairs = [(str(workdir), "/workdir"), (str(workdir).replace("/", "-"), "-workdir"),
             (str(home), "/home/user"), (str(home).replace("/", "-"), "-home-user"),
             (tempfile.gettempdir(), "/tmp"), (f"Linux {os.uname().release}", "Linux 6.1.0")]
    return sorted(set(pairs), key=lambda pair: -len(pair[0]))


def anonymize(body: Any) -> Any:
    """Claude Code's metadata.user_id carries a device id and a session id."""
    if not (isinstance(body, dict) and isinstance(body.get("metadata"), dict)):
        return body
    user_id = body["metadata"].get("user_id")
    try:
        ids = json.loads(user_id)
    except (TypeError, ValueError):
        return body
    if not isinstance(ids, dict):
        return body
    ids = {key: re.sub(r"[0-9a-f]", "0", value) if isinstance(value, str) else value
           for key, value in ids.items()}
    return {**body, "metadata": {**body["metadata"], "user_id": json.dumps(
        ids, separators=(",", ":"))}}


def capture(which: str, timeout: float) -> tuple[dict[str, Any], subprocess.CompletedProcess]:
    server = Recorder()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory(prefix="agent-capture-") as tmp:
        home = Path(tmp) / "home"
        try:
            done = run_cli(which, server.url, home, timeout)
        finally:
            server.shutdown()
        records = sanitize(server.records, placeholders(home))
    return stable_ids(summarize(records)), done


def stable_ids(value: Any) -> Any:
    """Every random UUID (sessions, threads, turns, installations) numbered instead."""
    text = json.dumps(value, ensure_ascii=False)
    numbers: dict[str, str] = {}

    def number(match: re.Match[str]) -> str:
        uuid = match.group(0).lower()
        numbers.setdefault(uuid, f"00000000-0000-4000-8000-{len(numbers) + 1:012d}")
        return numbers[uuid]

    return json.loads(_UUID.sub(number, text))


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    firsts = [i for i, r in enumerate(records)
              if r["method"] == "POST" and r["path"].split("?")[0] in MODEL_PATHS]
    if not firsts:
        return {"other_requests": [_line(r) for r in records]}
    first = records[firsts[0]]
    headers = {key.lower(): value for key, value in first["headers"].items()
               if key.lower() not in VOLATILE_HEADERS}
    others = [{**_line(r), "order": "before" if i < firsts[0] else "after"}
              for i, r in enumerate(records) if i != firsts[0]]
    return {"method": first["method"], "path": first["path"], "headers": headers,
            "body": anonymize(first["body"]), "other_requests": others}


def _line(record: dict[str, Any]) -> dict[str, str]:
    return {"method": record["method"], "path": record["path"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cli", choices=["claude", "codex"])
    parser.add_argument("out", type=Path, help="where to write the sanitized capture")
    parser.add_argument("--timeout", type=float, default=180)
    args = parser.parse_args()
    try:
        result, done = capture(args.cli, args.timeout)
    except agent_clis.InstallError as err:
        print(f"npm could not install the CLI: {err}", file=sys.stderr)
        return 1
    text = json.dumps(result, indent=1, ensure_ascii=False) + "\n"
    for private in {f"{Path.home()}/", f"{os.getcwd()}/"} - {"//"}:
        if private in text:
            print(f"warning: the capture mentions {private}", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"{args.cli} exited {done.returncode}; stdout {done.stdout.strip()[:200]!r}")
    if done.returncode:
        print(re.sub(r"\s+", " ", done.stderr)[-800:], file=sys.stderr)
    print(f"wrote {args.out}: " + ", ".join(f"{r['method']} {r['path']}"
                                            for r in result["other_requests"]))
    return 0 if "body" in result else 1


if __name__ == "__main__":
    sys.exit(main())
