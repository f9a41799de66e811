"""Two shimmy replicas behind nginx and behind HAProxy, configured by ``deploy/``.

A conversation (a session header) stays on one replica, so its next turn reuses the
cached prefix there; requests without one go to the least busy replica; streams pass
through unbuffered and a client's disconnect reaches the replica; a replica killed is
skipped and the requests go on succeeding on the other. Runs Debian's nginx and haproxy,
which ``scripts/setup.sh`` installs when run as root; skipped where they are missing.
"""

from __future__ import annotations

import http.client
import json
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from balancer import (
    HAPROXY_CONF,
    NGINX_CONF,
    REPO,
    Balancer,
    Haproxy,
    Nginx,
    check,
    find_haproxy,
    find_nginx,
)
from clients import WsClient, busy_slots, request
from conftest import ShimmyProcess, isolated_env, wait_until
from wsproto.events import TextMessage

from shimmy.cli import build_parser

REPLICA_ARGS = ["--threads", "1", "--ctx", "1024", "--parallel", "2", "--keep-alive", "-1"]
# a system prompt of a few 64-token chunks: what a replica caches between turns
CONTEXT = ("You are a patient guide to the history of rivers, bridges and harbours. Answer "
           "briefly, name places precisely and say when you are unsure. ") * 6


@pytest.fixture(scope="module")
def nginx_binary() -> str:
    binary = find_nginx()
    if binary is None:
        pytest.skip("nginx is not installed (scripts/setup.sh installs Debian's nginx when "
                    "run as root; or: apt-get install nginx)")
    return binary


BALANCERS = {"nginx": (find_nginx, Nginx), "haproxy": (find_haproxy, Haproxy)}


@pytest.fixture(scope="module", params=sorted(BALANCERS, reverse=True))
def kind(request: pytest.FixtureRequest) -> str:
    """nginx (first), then HAProxy: each in front of replicas of its own."""
    find, _ = BALANCERS[request.param]
    if find() is None:
        pytest.skip(f"{request.param} is not installed (scripts/setup.sh installs Debian's "
                    f"package when run as root; or: apt-get install {request.param})")
    return request.param


@pytest.fixture(scope="module")
def replicas(model_path: Path, tmp_path_factory: pytest.TempPathFactory,
             kind: str) -> Iterator[list[ShimmyProcess]]:
    started = []
    try:
        for _ in range(2):
            home = tmp_path_factory.mktemp("replica")
            replica = ShimmyProcess(["--model-path", str(model_path), *REPLICA_ARGS],
                                    isolated_env(home), home)
            started.append(replica)
        for replica in started:  # load the model before the balancer sees traffic
            status, _, body = request(replica.port, "POST", "/api/generate",
                                      {"prompt": "Hi", "max_tokens": 1})
            assert status == 200, body
        yield started
    finally:
        for replica in started:
            replica.stop()


@pytest.fixture(scope="module")
def balancer(kind: str, replicas: list[ShimmyProcess],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Balancer]:
    find, start = BALANCERS[kind]
    running = start(find(), tmp_path_factory.mktemp(kind), [r.port for r in replicas])
    yield running
    running.stop()


def replica_of(headers: dict[str, str]) -> int:
    """The port of the replica that answered (the last one nginx tried)."""
    return int(headers["x-shimmy-replica"].split(",")[-1].strip().rsplit(":", 1)[1])


def chat(port: int, messages: list[dict], session: str | None = None,
         max_tokens: int = 6, header: str = "X-Session-Id") -> tuple[dict[str, str], dict]:
    headers = {header: session} if session else None
    status, got, body = request(port, "POST", "/v1/chat/completions",
                                {"model": "default", "messages": messages, "temperature": 0,
                                 "max_tokens": max_tokens}, headers=headers)
    assert status == 200, body
    return got, json.loads(body)


def cached(answer: dict) -> int:
    return answer["usage"]["prompt_tokens_details"]["cached_tokens"]


def test_the_shipped_configs_pass_their_checks(nginx_binary: str, tmp_path: Path) -> None:
    result = check(nginx_binary, tmp_path, NGINX_CONF)
    assert result.returncode == 0, result.stderr
    haproxy = find_haproxy()
    if haproxy is None:
        pytest.skip("haproxy is not installed: its config is not checked")
    result = subprocess.run([haproxy, "-c", "-f", str(HAPROXY_CONF)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_session_stays_on_its_replica_and_reuses_its_prefix(balancer: Balancer) -> None:
    # the headers that Claude Code, Codex and other clients send
    for n, header in enumerate(["X-Claude-Code-Session-Id", "Thread-Id", "X-Session-Id"] * 2):
        session = f"s{n}-{uuid.uuid4().hex[:8]}"
        # each conversation differs from its first words on: only its own turns are cached
        messages = [{"role": "system", "content": f"Conversation {session}. {CONTEXT}"},
                    {"role": "user", "content": "Name a famous bridge."}]
        headers, first = chat(balancer.port, messages, session, header=header)
        replica = replica_of(headers)
        for turn in ("And a famous harbour?", "And a river?"):
            messages += [first["choices"][0]["message"], {"role": "user", "content": turn}]
            headers, answer = chat(balancer.port, messages, session, header=header)
            assert replica_of(headers) == replica, f"session {session} ({header}) moved"
            # the earlier turn's prompt (whole 64-token chunks of it at least) was reused
            assert cached(answer) >= first["usage"]["prompt_tokens"] - 64 > 0, answer
            first = answer


def open_stream(port: int, max_tokens: int) -> tuple[http.client.HTTPConnection,
                                                     http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/v1/completions", body=json.dumps(
        {"model": "default", "prompt": "Once upon a time", "max_tokens": max_tokens,
         "stream": True, "ignore_eos": True, "temperature": 0}).encode(),
        headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("content-type", "").startswith("text/event-stream")
    return conn, response


def first_text(response: http.client.HTTPResponse) -> str:
    for line in response:
        if line.startswith(b"data: ") and (text := json.loads(line[6:])["choices"][0]["text"]):
            return text
    raise AssertionError("the stream ended without text")


def test_streams_pass_unbuffered_to_the_least_busy_replica(balancer: Balancer) -> None:
    # long streams (several seconds each here) that the test cuts off
    conn_a, stream_a = open_stream(balancer.port, 800)
    replica_a = replica_of({k.lower(): v for k, v in stream_a.getheaders()})
    assert first_text(stream_a)
    # the first tokens came through while the replica still generates: nothing held back
    assert busy_slots(replica_a) == 1
    conn_b, stream_b = open_stream(balancer.port, 800)
    replica_b = replica_of({k.lower(): v for k, v in stream_b.getheaders()})
    assert replica_b != replica_a  # least connections: replica A has a stream open
    assert first_text(stream_b)
    conn_a.close()
    conn_b.close()
    # each client's disconnect passes through nginx and frees its replica's slot
    assert wait_until(lambda: busy_slots(replica_a) == 0 and busy_slots(replica_b) == 0,
                      timeout=10)


def test_a_websocket_passes_through(balancer: Balancer) -> None:
    client = WsClient(balancer.port, "/ws/generate")
    client.send(TextMessage(data=json.dumps({"prompt": "Hello", "max_tokens": 4,
                                             "temperature": 0})))
    frames = []
    while "done" not in (frame := json.loads(client.receive_text())):
        frames.append(frame)
    client.close()
    assert frame["usage"]["completion_tokens"] == 4 and frames


def test_a_dead_replica_is_skipped(balancer: Balancer, replicas: list[ShimmyProcess]) -> None:
    # runs last in this file: it kills a replica
    session = f"failover-{uuid.uuid4().hex[:8]}"
    messages = [{"role": "user", "content": "Name a famous harbour."}]
    headers, _ = chat(balancer.port, messages, session)
    victim = next(r for r in replicas if r.port == replica_of(headers))
    survivor = next(r for r in replicas if r is not victim)
    victim.proc.kill()
    victim.proc.wait(timeout=10)
    # nginx closes its idle connection to the dead replica as the close reaches it; a
    # request sent on that connection before would get 502 (docs/DEPLOYMENT.md)
    time.sleep(0.2)
    headers, _ = chat(balancer.port, messages, session)
    if balancer.name == "nginx":  # nginx names each replica it tried; HAProxy the last
        tried = [addr.strip() for addr in headers["x-shimmy-replica"].split(",")]
        assert tried == [f"127.0.0.1:{victim.port}", f"127.0.0.1:{survivor.port}"]
    else:
        assert replica_of(headers) == survivor.port
    for request_session in (session, None, None, "another-session", None):
        headers, answer = chat(balancer.port, messages, request_session)
        assert replica_of(headers) == survivor.port
        assert answer["choices"][0]["finish_reason"] in ("stop", "length")
    conn, stream = open_stream(balancer.port, 8)
    assert first_text(stream)
    conn.close()
    status, _, _ = request(balancer.port, "GET", "/api/health")
    assert status == 200


def exec_start(unit: str) -> list[str]:
    """The unit's ExecStart as shimmy's arguments, its variables given example values."""
    text = (REPO / "deploy" / "systemd" / unit).read_text()
    [line] = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    words = shlex.split(line.removeprefix("ExecStart="))
    assert words[0].endswith("/shimmy")
    values = {"${BIND_HOST}:%i": "127.0.0.1:11435", "${RPC_BIND}": "127.0.0.1:50052",
              "${RPC_THREADS}": "4", "$SERVE_ARGS": None}
    return [values.get(word, word) for word in words[1:] if values.get(word, word) is not None]


def test_the_units_pass_systemd_analyze(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    folder = REPO / "deploy" / "systemd"
    shutil.copy(folder / "shimmy@.service", tmp_path / "shimmy@11435.service")
    shutil.copy(folder / "shimmy-rpc-worker.service", tmp_path)
    result = subprocess.run([analyze, "verify", "--man=no", "shimmy@11435.service",
                             "shimmy-rpc-worker.service"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=60)
    # the one complaint allowed: shimmy is not installed where the units expect it here
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if line and "/usr/local/bin/shimmy is not executable" not in line]
    assert not problems, problems


def test_the_replica_unit_runs_a_real_command_line() -> None:
    args = build_parser().parse_args(exec_start("shimmy@.service"))
    assert args.command == "serve" and args.bind == "127.0.0.1:11435"


def test_the_rpc_worker_unit_runs_a_real_command_line() -> None:
    parser = build_parser()
    words = exec_start("shimmy-rpc-worker.service")
    try:
        args = parser.parse_args(words)
    except SystemExit:
        pytest.skip("this build has no 'shimmy rpc-worker' command yet")
    assert args.command == "rpc-worker"
