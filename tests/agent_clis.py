"""The real coding-agent CLIs, pinned, installed once from npm, run offline against shimmy.

``claude_code()`` and ``codex()`` return the executable (or skip the test when npm cannot
install it); ``claude_env()`` and ``codex_env()`` build an environment in which the CLI
talks only to the given shimmy base URL, with a private HOME so nothing of this machine's
configuration or credentials leaks in.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# (npm package, pinned version, executable)
CLAUDE_CODE = ("@anthropic-ai/claude-code", "2.1.197", "claude")
CODEX = ("@openai/codex", "0.171.0", "codex")
INSTALL_TIMEOUT = 600  # seconds; the Claude Code native binary is about 250 MB
API_KEY = "shimmy-local"  # any value: shimmy without --api-key ignores it
# Variables of the machine that could point a CLI elsewhere or hand it credentials.
_DROPPED_PREFIXES = ("ANTHROPIC_", "CLAUDE_", "CLAUDECODE", "OPENAI_", "CODEX_", "AZURE_",
                     "AWS_", "GOOGLE_", "VERTEX_", "SHIMMY_", "XDG_", "NODE_OPTIONS", "NPM_")
_PROXIES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


class InstallError(RuntimeError):
    """npm could not install a CLI; the message is npm's first line of error."""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "shimmy" / "agents"


def install(package: str, version: str, command: str, root: Path | None = None) -> Path:
    """The path of ``command`` from ``package@version``, installed on first use.

    Concurrent callers (pytest-xdist workers, two sessions) wait on a lock file; a
    finished install is marked by a ``.installed`` file, so a killed npm is redone.
    """
    root = root or cache_root()
    target = root / f"{package.replace('/', '+')}@{version}"
    executable = target / "node_modules" / ".bin" / command
    marker = target / ".installed"
    if marker.exists() and executable.exists():
        return executable
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{target.name}.lock"):
        if not (marker.exists() and executable.exists()):
            _npm_install(package, version, target)
            if not executable.exists():
                raise InstallError(f"the package has no '{command}' executable")
            _check_runs(executable, version)
            marker.write_text(f"{package}@{version}\n")
    return executable


def _check_runs(executable: Path, version: str) -> None:
    """``--version`` names ``version``: the platform binary came with it (Codex's is an
    optional dependency; Claude Code's postinstall script copies its own into place)."""
    try:
        done = subprocess.run([str(executable), "--version"], capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise InstallError(f"{executable.name} --version failed: {err}") from None
    if done.returncode != 0 or version not in done.stdout:
        raise InstallError(f"{executable.name} --version: "
                           f"{_first_error_line(done.stderr + done.stdout)}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _npm_install(package: str, version: str, target: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise InstallError("npm is not on PATH")
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    command = [npm, "install", "--prefix", str(staging), "--no-audit", "--no-fund",
               "--no-save", "--loglevel", "error", f"{package}@{version}"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
                              env={**os.environ, "npm_config_update_notifier": "false"})
    except subprocess.TimeoutExpired:
        shutil.rmtree(staging, ignore_errors=True)
        raise InstallError(f"npm install took over {INSTALL_TIMEOUT} s") from None
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise InstallError(_first_error_line(done.stderr or done.stdout))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)  # .bin links are relative, so they survive the move


def _first_error_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "ERR" in line or "error" in line.lower()]
    return (errors or lines or ["no output"])[0]


def require(spec: tuple[str, str, str]) -> Path:
    """The CLI's executable, or a skipped test saying why npm could not install it."""
    import pytest

    package, version, command = spec
    try:
        return install(package, version, command)
    except InstallError as err:
        pytest.skip(f"npm could not install {package}@{version}: {err}")


def claude_code() -> Path:
    return require(CLAUDE_CODE)


def codex() -> Path:
    return require(CODEX)


def base_env(home: Path) -> dict[str, str]:
    """This process's environment without credentials, proxies or config locations."""
    env = {key: value for key, value in os.environ.items()
           if not key.upper().startswith(_DROPPED_PREFIXES) and key.lower() not in _PROXIES}
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
               XDG_CACHE_HOME=str(home / ".cache"), XDG_DATA_HOME=str(home / ".local/share"),
               NO_PROXY="127.0.0.1,localhost", NO_COLOR="1", TERM="dumb", CI="1")
    return env


def claude_env(base_url: str, home: Path, model: str = "claude-haiku-4-5") -> dict[str, str]:
    """Claude Code against ``base_url`` (no ``/v1``): API-key auth, no other traffic."""
    env = base_env(home)
    env.update(
        ANTHROPIC_BASE_URL=base_url.rstrip("/"),
        ANTHROPIC_API_KEY=API_KEY,
        ANTHROPIC_MODEL=model,
        ANTHROPIC_SMALL_FAST_MODEL=model,
        ANTHROPIC_DEFAULT_HAIKU_MODEL=model,
        ANTHROPIC_DEFAULT_SONNET_MODEL=model,
        ANTHROPIC_DEFAULT_OPUS_MODEL=model,
        CLAUDE_CONFIG_DIR=str(home / ".claude"),
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_NON_ESSENTIAL_MODEL_CALLS="1",
        DISABLE_TELEMETRY="1",
        DISABLE_ERROR_REPORTING="1",
        DISABLE_AUTOUPDATER="1",
        DISABLE_BUG_COMMAND="1",
        CLAUDE_CODE_DISABLE_TERMINAL_TITLE="1",
        CLAUDE_CODE_IDE_SKIP_AUTO_INSTALL="1",
        # a small model on a CPU reads a 20k-token prompt for minutes
        API_TIMEOUT_MS="1800000",
        BASH_DEFAULT_TIMEOUT_MS="60000",
    )
    return env


def claude_args(prompt: str, model: str = "claude-haiku-4-5") -> list[str]:
    """Arguments after the executable: one non-interactive turn, nothing persisted."""
    return ["-p", prompt, "--model", model, "--output-format", "text",
            "--no-session-persistence", "--permission-mode", "default",
            "--setting-sources", "", "--strict-mcp-config"]


CODEX_CONFIG = """\
model = "{model}"
model_provider = "shimmy"
approval_policy = "never"
sandbox_mode = "read-only"
check_for_update_on_startup = false
model_context_window = {context}

[model_providers.shimmy]
name = "shimmy"
base_url = "{base_url}/v1"
wire_api = "responses"
requires_openai_auth = false
request_max_retries = 0
stream_max_retries = 0
stream_idle_timeout_ms = 1800000

[analytics]
enabled = false

[feedback]
enabled = false
"""


def codex_env(base_url: str, home: Path, model: str = "default",
              context: int = 32768) -> dict[str, str]:
    """Codex against ``base_url`` (no ``/v1``): a private CODEX_HOME whose config.toml
    defines the provider ``shimmy`` on the Responses API, with no key."""
    env = base_env(home)
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(CODEX_CONFIG.format(
        model=model, base_url=base_url.rstrip("/"), context=context))
    env.update(CODEX_HOME=str(codex_home), RUST_LOG="error")
    return env


def codex_args(prompt: str, workdir: Path) -> list[str]:
    """Arguments after the executable: one non-interactive turn in ``workdir``."""
    return ["exec", "--skip-git-repo-check", "--strict-config", "--ephemeral", "--color", "never",
            "--sandbox", "read-only", "--cd", str(workdir), prompt]


# ---- a shimmy server big enough for an agent's prompt (Claude Code's is about 20k tokens)

AGENT_CONTEXT = 32768
CAPTURED_MODEL = "some-model"  # the model name in tests/data/agents' captured requests


def serve_for_agents(model_path: Path, home: Path) -> Any:
    """``shimmy serve`` on the embedded model (a conftest.ShimmyProcess) as README sets it
    up for agents: two slots of 32k tokens, long prompts read in 512-token chunks over an
    f16 cache, answers capped (a base model may not stop by itself, and Codex sends no
    limit), the captured requests' model name an alias of the default model."""
    from conftest import ShimmyProcess, isolated_env

    args = ["--model-path", str(model_path), "--ctx", str(AGENT_CONTEXT), "--parallel", "2",
            "--kv-cache-type", "f16", "--batch-size", "512", "--n-predict", "64",
            "--keep-alive", "-1", "--model-alias", f"{CAPTURED_MODEL}=default"]
    return ShimmyProcess(args, isolated_env(home), home)
