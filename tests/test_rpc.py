"""One model over several machines: llama.cpp's RPC backend (docs/RPC.md).

Workers are ``shimmy rpc-worker`` processes on loopback; the embedded model is split over
them and this process's CPU. The tests that need the RPC module skip where it is missing.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import request, request_json, sse_events
from conftest import REPO, ShimmyProcess, isolated_env

from shimmy.config import Config, ConfigError
from shimmy.engine import library, rpc

SMALL = ["--threads", "1", "--parallel", "1", "--ctx", "512"]


# ---------------------------------------------------------------- without workers


def test_endpoints_parse_as_llama_server_takes_them() -> None:
    assert rpc.parse_endpoints("10.0.0.2:50052, host-b:1") == ("10.0.0.2:50052", "host-b:1")
    assert rpc.parse_endpoints("[::1]:50052") == ("[::1]:50052",)
    for bad in ("", "host", "host:", "host:0", "host:70000", "a:1,a:1", "a b:1"):
        with pytest.raises(ValueError):
            rpc.parse_endpoints(bad)


def test_tensor_split_needs_rpc_and_rpc_offloads_every_layer_by_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from shimmy.cli import build_parser

    monkeypatch.delenv("SHIMMY_RPC", raising=False)
    parse = build_parser().parse_args
    with pytest.raises(ConfigError, match="--tensor-split"):
        Config.from_args(parse(["generate", "--prompt", "x", "--tensor-split", "3,1"]))
    config = Config.from_args(parse(["probe", "--rpc", "a:1,b:2", "--tensor-split", "3,1"]))
    assert (config.rpc, config.tensor_split, config.gpu_layers) == (("a:1", "b:2"), (3, 1), -1)
    assert Config.from_args(parse(["probe", "--rpc", "a:1", "--gpu-layers", "5"])).gpu_layers == 5
    monkeypatch.setenv("SHIMMY_RPC", "c:3")
    assert Config.from_args(parse(["serve"])).engine_settings().rpc == ("c:3",)
    for bad in ("3,x", "0,0", "-1,2"):
        with pytest.raises(ConfigError, match="--tensor-split"):
            Config.from_args(parse(["probe", "--rpc", "a:1", f"--tensor-split={bad}"]))


def _listener(answer: bytes | None) -> tuple[socket.socket, int]:
    """A loopback server that answers every connection with ``answer`` and closes it, or
    (None) accepts and stays silent."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            if answer is None:
                held.append(conn)
            else:
                conn.recv(64)
                conn.sendall(answer)
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def test_check_worker_names_the_worker_and_why() -> None:
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with pytest.raises(rpc.RpcError, match=rf"127.0.0.1:{port} is unreachable"):
        rpc.check_worker(f"127.0.0.1:{port}")
    silent, port = _listener(None)
    with pytest.raises(rpc.RpcError, match=rf"127.0.0.1:{port} did not answer within 0.5 s"):
        rpc.check_worker(f"127.0.0.1:{port}", timeout=0.5)
    silent.close()
    http, port = _listener(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    with pytest.raises(rpc.RpcError, match=rf"127.0.0.1:{port} answered the hello"):
        rpc.check_worker(f"127.0.0.1:{port}")
    http.close()
    newer = (28).to_bytes(8, "little") + bytes([8, 0, 0, 0]) + bytes(24)
    other, port = _listener(newer)
    with pytest.raises(rpc.RpcError, match=r"speaks RPC protocol 8\.0\.0"):
        rpc.check_worker(f"127.0.0.1:{port}")
    other.close()


def test_placement_reads_llama_cpps_buffer_lines() -> None:
    log = ("load_tensors: offloaded 12/19 layers to GPU\n"
           "load_tensors:   CPU_Mapped model buffer size =   195.20 MiB\n"
           "load_tensors: RPC0[127.0.0.1:5]  model buffer size =  21.30 MiB\n"
           "llama_kv_cache: RPC0[127.0.0.1:5] KV buffer size =     3.00 MiB\n"
           "llama_kv_cache: RPC0[127.0.0.1:5] KV buffer size =     1.00 MiB\n")
    assert rpc.placement(log) == {
        "layers": {"offloaded": 12, "of": 19},
        "buffers_mib": {"CPU_Mapped": {"model": 195.2},
                        "RPC0[127.0.0.1:5]": {"model": 21.3, "KV": 4.0}}}


# ---------------------------------------------------------------- with workers


def _rpc_env(home: Path) -> dict[str, str]:
    """A private environment in which the RPC module loads, or skip saying why not."""
    import os

    extra = {"PYTHONPATH": str(REPO)}  # this tree's shimmy, whatever the working folder
    directory = library.backend_dir()
    if not (directory and (directory / "libggml-rpc.so").is_file()):
        module = os.environ.get(library.RPC_BACKEND_ENV)
        if not module:
            pytest.skip("llama.cpp's RPC backend (libggml-rpc.so) is not installed beside the "
                        "CPU variants: scripts/setup.sh builds it with scripts/llama_wheel.py "
                        f"(or set {library.RPC_BACKEND_ENV})")
        extra[library.RPC_BACKEND_ENV] = module
    return isolated_env(home, **extra)


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


class Worker:
    """``shimmy rpc-worker`` on a free loopback port, ready when the RPC hello works."""

    def __init__(self, env: dict[str, str], port: int | None = None,
                 shimmy_command: list[str] | None = None) -> None:
        self.endpoint = f"127.0.0.1:{port or _free_port()}"
        command = shimmy_command or [sys.executable, "-m", "shimmy"]
        self.proc = subprocess.Popen(
            [*command, "rpc-worker", "--bind", self.endpoint, "--threads", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
        deadline = time.monotonic() + 30
        while True:
            try:
                rpc.check_worker(self.endpoint, timeout=2)
                return
            except rpc.RpcError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"worker did not start: {self.stop()}") from None
                time.sleep(0.1)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
        out, _ = self.proc.communicate(timeout=15)
        return out


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return _rpc_env(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def workers(env: dict[str, str]) -> Iterator[list[Worker]]:
    started = [Worker(env), Worker(env)]
    yield started
    for worker in started:
        out = worker.stop()
        assert worker.proc.returncode == 0, out  # SIGTERM ends a worker cleanly
        assert "no authentication" in out and "rpc-worker: stopped" in out


def shimmy(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shimmy", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)


@pytest.mark.slow
def test_split_over_two_workers_and_this_cpu_writes_the_local_text(
        model_path: Path, env: dict[str, str], workers: list[Worker]) -> None:
    endpoints = ",".join(worker.endpoint for worker in workers)
    prompt = ["generate", "--model-path", str(model_path), "--prompt", "The capital of France is",
              "--temperature", "0", "--max-tokens", "32", *SMALL,
              # the invariant profile, no guessing ahead: the text may depend only on
              # where the numbers are computed, not on how a step is shaped
              "--deterministic", "--draft", "0"]
    local = shimmy(env, *prompt)
    split = shimmy(env, *prompt, "--rpc", endpoints, "--gpu-layers", "12")
    assert local.returncode == 0 and split.returncode == 0, split.stderr
    assert len(local.stdout.split()) > 10
    assert split.stdout == local.stdout
    probe = shimmy(env, "probe", "--json", "--model-path", str(model_path), *SMALL,
                   "--rpc", endpoints, "--gpu-layers", "12")
    facts = json.loads(probe.stdout)
    assert facts["ok"], probe.stderr
    buffers = facts["placement"]["buffers_mib"]
    assert facts["placement"]["layers"] == {"offloaded": 12, "of": 19}
    for worker in workers:  # weights, KV cache and compute buffers on each worker
        names = [name for name in buffers if name.endswith(f"[{worker.endpoint}]")]
        assert len(names) == 1, buffers
        assert buffers[names[0]]["model"] > 1 and buffers[names[0]]["KV"] > 0
    assert buffers["CPU_Mapped"]["model"] > 1  # and the first layers here


@pytest.mark.slow
def test_tensor_split_and_diag(model_path: Path, env: dict[str, str],
                               workers: list[Worker]) -> None:
    first, second = (worker.endpoint for worker in workers)
    probe = shimmy(env, "probe", "--json", "--model-path", str(model_path), *SMALL,
                   "--rpc", f"{first},{second}", "--tensor-split", "1,0")
    buffers = json.loads(probe.stdout)["placement"]["buffers_mib"]
    holding = {name for name, sizes in buffers.items() if "model" in sizes}
    assert any(name.endswith(f"[{first}]") for name in holding), buffers
    assert not any(name.endswith(f"[{second}]") for name in holding), buffers
    diag = shimmy(env, "diag", "--json", "--rpc", f"{first},{second}")
    devices = json.loads(diag.stdout)["rpc_devices"]
    assert [device["endpoint"] for device in devices] == [first, second]
    assert all(0 < device["free_bytes"] <= device["total_bytes"] for device in devices)


@pytest.mark.slow
def test_an_unreachable_worker_fails_the_load_and_the_server_stays(
        model_path: Path, env: dict[str, str], tmp_path: Path) -> None:
    port = _free_port()
    server = ShimmyProcess(["--model-path", str(model_path), *SMALL, "--keep-alive", "0",
                            "--rpc", f"127.0.0.1:{port}"], env, tmp_path)
    try:
        status, body = request_json(server.port, "POST", "/v1/completions",
                                    {"model": "default", "prompt": "Hi", "max_tokens": 4})
        assert status == 500, body
        assert f"RPC worker 127.0.0.1:{port} is unreachable" in json.dumps(body)
        assert request(server.port, "GET", "/api/health")[0] == 200
        worker = Worker(env, port)  # the worker comes up: the next request loads
        try:
            for _ in range(2):  # unloaded at once (keep-alive 0), the model frees the worker
                status, body = request_json(server.port, "POST", "/v1/completions",
                                            {"model": "default", "prompt": "Hi",
                                             "max_tokens": 4})
                assert status == 200, body
                time.sleep(1)
        finally:
            worker.stop()
    finally:
        server.stop()


@pytest.mark.slow
def test_a_worker_killed_mid_stream_ends_the_server_naming_it(
        model_path: Path, env: dict[str, str], tmp_path: Path) -> None:
    doomed = Worker(env)
    server = ShimmyProcess(["--model-path", str(model_path), *SMALL, "--rpc", doomed.endpoint],
                           env, tmp_path)
    try:
        events = sse_events(server.port, "/v1/completions",
                            {"model": "default", "prompt": "Once upon a time",
                             "max_tokens": 400, "temperature": 0, "stream": True})
        received: list[object] = []
        with contextlib.suppress(OSError, http.client.HTTPException):
            for event in events:  # the stream breaks off when the server ends
                received.append(event)
                if len(received) == 5:
                    doomed.proc.kill()
        out = server.proc.communicate(timeout=60)[0]
        assert len(received) >= 5 and "[DONE]" not in received
    finally:
        doomed.stop()
        if server.proc.poll() is None:
            server.stop()
    assert server.proc.returncode == library.load().rpc_lost_exit_status() == 75, out
    last = out.strip().splitlines()[-1]
    assert f"lost RPC worker {doomed.endpoint}" in last, out


@pytest.mark.slow
def test_a_worker_on_a_taken_port_says_so(env: dict[str, str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = shimmy(env, "rpc-worker", "--bind", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert f"cannot serve at 127.0.0.1:{port}" in result.stderr


@pytest.mark.slow
@pytest.mark.skipif(not (REPO / "dist" / "shimmy").is_file(),
                    reason="dist/shimmy is not built (scripts/build_binary.sh)")
def test_the_binary_serves_and_uses_a_worker(model_path: Path, tmp_path: Path) -> None:
    binary = str(REPO / "dist" / "shimmy")
    env = {"PATH": "/nonexistent", "HOME": str(tmp_path)}  # no Python, no venv
    diag = subprocess.run([binary, "diag"], capture_output=True, text=True, env=env)
    if "rpc backend:  installed" not in diag.stdout:
        pytest.skip("this dist/shimmy was built without llama.cpp's RPC backend")
    worker = Worker(env, shimmy_command=[binary])
    try:
        result = subprocess.run([binary, "generate", "--model-path", str(model_path),
                                 "--prompt", "Hello", "--temperature", "0", "--max-tokens",
                                 "8", *SMALL, "--rpc", worker.endpoint], capture_output=True,
                                text=True, env=env, timeout=300)
        assert result.returncode == 0 and result.stdout.strip(), result.stderr
    finally:
        out = worker.stop()
    assert worker.proc.returncode == 0 and "Accepted client connection" in out, out

