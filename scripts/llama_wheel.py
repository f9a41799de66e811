#!/usr/bin/env python3
"""Build llama.cpp from llama-cpp-python's source distribution and make the wheel shimmy
installs; print the wheel's path.

    llama_wheel.py [--variants this|all] [--cached | --sources]

The sources are the pinned llama-cpp-python's own (its ``vendor/llama.cpp``), built
portable: no ``-march=native``, ggml's CPU backend as one loadable module per x86-64
level (``libggml-cpu-<variant>.so``; ggml loads the best one the CPU runs), and the RPC
backend as one more module (``libggml-rpc.so``). Two CMake trees share the work:

- ``core``: libllama, libggml, libggml-base, built once (about 2.5 minutes on two cores).
- ``modules``: the CPU variants and the RPC backend, each built alone on demand (about
  30 s each).

``--variants this`` (the default) needs the core and the variant this CPU would load, so
a fresh machine answers after about 3 minutes of compiling; ``--variants all`` adds the
other variants (about 6 more minutes), which the single-file binary carries. Both wheels
hold the same core files and the same variant files, so a test run on either runs the
bits the binary ships. Where the whole set is built, ``--variants this`` prints it.

Nothing of llama-cpp-python's own build is needed by shimmy (it never imports the
``llama_cpp`` Python package): its CMake project also compiles llama.cpp's ``common``
library and the multimodal ``mtmd`` library, which shimmy does not use, and builds every
target at once (about 15 minutes on two cores, against about 9 for both trees here). The
wheel holds the Python package all the same, so that pip sees llama-cpp-python installed
at the pinned version. Kept under ``~/.cache/shimmy/llama/<key>``, the key
covering the version, the CMake arguments and the compiler. ``SHIMMY_EXTRA_CMAKE_ARGS``
adds CMake arguments to both trees (e.g. ``-DGGML_CUDA=on``, untested); ``SHIMMY_BUILD_JOBS``
sets the compile jobs (default: the CPU count). With ``--cached`` it only prints the path
of a wheel built before, or exits with status 1; with ``--sources`` it only fetches the
sources (a set-up does that before it downloads anything else, so that the two do not
share the network). Standard library only.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_progress  # noqa: E402  (beside this script)

VERSION = "0.3.36"
DIST = f"llama_cpp_python-{VERSION}"
WHEEL_NAME = f"{DIST}-py3-none-linux_{platform.machine()}.whl"
SHARED_ARGS = [
    "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON", "-DGGML_NATIVE=OFF",
    "-DGGML_BACKEND_DL=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_COMMON=OFF",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=OFF",
    "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF"]
# the core carries no CPU backend of its own; its libraries find each other beside them
CORE_ARGS = ["-DGGML_CPU=OFF", "-DCMAKE_INSTALL_RPATH=$ORIGIN",
             "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON"]
MODULE_ARGS = ["-DGGML_CPU_ALL_VARIANTS=ON", "-DGGML_RPC=ON", "-DGGML_RPC_RDMA=OFF"]
CORE_LIBS = ("libllama", "libggml", "libggml-base")

# ggml's x86-64 CPU variants (ggml/src/CMakeLists.txt) with the features each needs, and
# ggml's score for a feature (ggml-cpu/arch/x86/cpu-feats.cpp): the variant loaded is the
# one scoring highest among those whose features the CPU has
X86_VARIANTS = {
    "x64": (), "sse42": ("SSE42",), "sandybridge": ("SSE42", "AVX"),
    "ivybridge": ("SSE42", "AVX", "F16C"), "piledriver": ("SSE42", "AVX", "F16C", "FMA"),
    "haswell": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2"),
    "skylakex": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512"),
    "cannonlake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI"),
    "cascadelake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VNNI"),
    "icelake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI",
                "AVX512_VNNI"),
    "cooperlake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VNNI",
                   "AVX512_BF16"),
    "zen4": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI",
             "AVX512_VNNI", "AVX512_BF16"),
    "alderlake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX_VNNI"),
    "sapphirerapids": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512",
                       "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16", "AMX_TILE", "AMX_INT8"),
}
FEATURE_FLAGS = {  # ggml's feature: the /proc/cpuinfo flags it checks
    "SSE42": ("sse4_2",), "AVX": ("avx",), "F16C": ("f16c",), "FMA": ("fma",),
    "AVX2": ("avx2",), "BMI2": ("bmi2",), "AVX_VNNI": ("avx_vnni",),
    "AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "AVX512_VBMI": ("avx512vbmi",), "AVX512_VNNI": ("avx512_vnni",),
    "AVX512_BF16": ("avx512_bf16",), "AMX_TILE": ("amx_tile",), "AMX_INT8": ("amx_int8",)}
FEATURE_SCORE = {"FMA": 1, "F16C": 2, "SSE42": 4, "BMI2": 8, "AVX": 16, "AVX2": 32,
                 "AVX_VNNI": 64, "AVX512": 128, "AVX512_VBMI": 256, "AVX512_BF16": 512,
                 "AVX512_VNNI": 1024, "AMX_INT8": 2048}


def best_variant(cpu_flags: set[str]) -> str:
    """The variant ggml would load on a CPU with these /proc/cpuinfo flags."""
    def runs(features: tuple[str, ...]) -> bool:
        return all(flag in cpu_flags for feature in features
                   for flag in FEATURE_FLAGS[feature])

    def score(features: tuple[str, ...]) -> int:
        return 1 + sum(FEATURE_SCORE.get(feature, 0) for feature in features)

    usable = [name for name, features in X86_VARIANTS.items() if runs(features)]
    return max(usable, key=lambda name: score(X86_VARIANTS[name]))


def cpu_flags() -> set[str] | None:
    """This CPU's flags, or None where they cannot be read (not x86-64 Linux)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    match = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    return set(match.group(1).split()) if match else None


class Build:
    """The cache folder of one build (one key) and the steps that fill it."""

    def __init__(self, cache: Path, extra_args: list[str]) -> None:
        self.extra_args = extra_args
        self.root = cache / "llama" / self.key()
        self.sdist = cache / "sdist" / f"{DIST}.tar.gz"
        self.src = self.root / "src"
        self.logs = self.root / "logs"
        self.jobs = os.environ.get("SHIMMY_BUILD_JOBS") or str(os.cpu_count() or 2)

    def key(self) -> str:
        compiler = "none"
        if shutil.which("c++"):
            compiler = subprocess.run(["c++", "--version"], capture_output=True, text=True,
                                      check=False).stdout.partition("\n")[0]
        parts = [VERSION, *SHARED_ARGS, *CORE_ARGS, *MODULE_ARGS, *self.extra_args, compiler]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    def wheel(self, variants: str) -> Path:
        return self.root / "wheels" / variants / WHEEL_NAME

    def cached_wheel(self, variants: str) -> Path | None:
        """The best wheel built before that serves ``--variants``, if any."""
        return next((self.wheel(name) for name in wheel_names(variants)
                     if self.wheel(name).is_file()), None)

    # the sources

    def fetch_sources(self) -> Path:
        if (self.src / "PKG-INFO").is_file():
            return self.src
        if not self.sdist.is_file():
            self.sdist.parent.mkdir(parents=True, exist_ok=True)
            note(f"fetching llama-cpp-python {VERSION}'s source distribution")
            subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q",
                            "download", "--no-binary", ":all:", "--no-deps",
                            f"llama-cpp-python=={VERSION}", "-d", str(self.sdist.parent)],
                           check=True, stdout=sys.stderr)
        partial = self.root / "src.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        with tarfile.open(self.sdist) as archive:
            archive.extractall(partial, filter="data")
        shutil.rmtree(self.src, ignore_errors=True)
        (partial / DIST).rename(self.src)
        partial.rmdir()
        return self.src

    # the two CMake trees

    def configure(self, tree: str, args: list[str]) -> Path:
        build = self.root / tree
        if (build / "build.ninja").is_file() or (build / "Makefile").is_file():
            return build
        generator = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={tool('ninja')}"]
        llama = self.src / "vendor" / "llama.cpp"
        # source paths in ggml's messages as llama.cpp/..., not this cache folder
        prefix_map = f"-ffile-prefix-map={llama}=llama.cpp"
        command = [tool("cmake"), "-S", str(llama), "-B", str(build), *generator, *SHARED_ARGS,
                   *args, *self.extra_args, f"-DCMAKE_C_FLAGS={prefix_map}",
                   f"-DCMAKE_CXX_FLAGS={prefix_map}"]
        log = self.logs / f"configure-{tree}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as out:
            if subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode:
                shutil.rmtree(build, ignore_errors=True)
                fail(f"configuring llama.cpp ({tree}) failed; its log: {log}")
        return build

    def compile(self, tree: str, targets: list[str], what: str) -> None:
        build = self.root / tree
        command = [tool("cmake"), "--build", str(build), "-j", self.jobs, "--target", *targets]
        if build_progress.run(command, self.logs / f"build-{tree}.log", what):
            fail(f"compiling llama.cpp ({what}) failed")

    def core(self) -> Path:
        """The core built and installed; the folder it is installed in."""
        stage = self.root / "core-installed"
        if (stage / "include" / "llama.h").is_file():
            return stage
        self.configure("core", CORE_ARGS)
        self.compile("core", ["llama"], "llama.cpp: libllama and ggml")
        install = [tool("cmake"), "--install", str(self.root / "core"), "--prefix", str(stage)]
        subprocess.run(install, check=True, stdout=subprocess.DEVNULL)
        return stage

    def modules(self, variants: list[str] | None) -> list[Path]:
        """ggml's loadable modules: the CPU variants named (None: all), the RPC backend."""
        build = self.configure("modules", MODULE_ARGS)
        if variants is None:
            # ggml's own target waits for every loadable backend the tree configures
            self.compile("modules", ["ggml"], "llama.cpp: every CPU variant")
            return sorted(path for path in (build / "bin").glob("libggml-*.so")
                          if path.name not in ("libggml-base.so",))
        wanted = [f"ggml-cpu-{name}" for name in variants] + ["ggml-rpc"] + self.gpu_modules()
        missing = [name for name in wanted if not (build / "bin" / f"lib{name}.so").is_file()]
        if missing:
            self.compile("modules", missing, f"llama.cpp: the {', '.join(variants)} CPU "
                         "variant and the RPC backend")
        return [build / "bin" / f"lib{name}.so" for name in wanted]

    def gpu_modules(self) -> list[str]:
        """The GPU backends the extra CMake arguments turn on (-DGGML_CUDA=on: ggml-cuda)."""
        found = (re.fullmatch(r"-DGGML_(CUDA|VULKAN|HIP|SYCL|OPENCL)=(?i:on|1|true|yes)",
                              arg) for arg in self.extra_args)
        return [f"ggml-{match.group(1).lower()}" for match in found if match]

    # the wheel

    def make_wheel(self, variants: str, modules: list[Path], core: Path) -> Path:
        target = self.wheel(variants)
        partial = target.with_suffix(".partial")
        target.parent.mkdir(parents=True, exist_ok=True)
        writer = WheelWriter(partial)
        package = self.src / "llama_cpp"
        for path in sorted(package.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                writer.add(f"llama_cpp/{path.relative_to(package)}", path)
        for path in sorted((core / "lib").glob("lib*.so*")):
            if path.name.split(".so")[0] in CORE_LIBS:
                writer.add(f"llama_cpp/lib/{path.name}", path)
        for folder in ("cmake", "pkgconfig"):  # llama.cpp's build number and commit
            for path in sorted((core / "lib" / folder).rglob("*")):
                if path.is_file():
                    writer.add(f"lib/{path.relative_to(core / 'lib')}", path)
        for path in sorted((core / "include").glob("*.h")):
            writer.add(f"include/{path.name}", path)
        for path in modules:
            writer.add(f"bin/{path.name}", path)
        writer.finish(self.src / "PKG-INFO")
        partial.rename(target)
        return target


class WheelWriter:
    """A wheel written file by file: the files, then METADATA, WHEEL and RECORD."""

    def __init__(self, path: Path) -> None:
        self.archive = zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED)
        self.records: list[str] = []
        self.info = f"{DIST}.dist-info"

    def add(self, name: str, source: Path) -> None:
        self.add_bytes(name, source.read_bytes(), executable=os.access(source, os.X_OK))

    def add_bytes(self, name: str, data: bytes, executable: bool = False) -> None:
        entry = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
        entry.compress_type = zipfile.ZIP_DEFLATED
        entry.external_attr = (0o755 if executable else 0o644) << 16
        self.archive.writestr(entry, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
        self.records.append(f"{name},sha256={digest.decode()},{len(data)}")

    def finish(self, metadata: Path) -> None:
        self.add(f"{self.info}/METADATA", metadata)
        tag = f"py3-none-linux_{platform.machine()}"
        self.add_bytes(f"{self.info}/WHEEL", (
            "Wheel-Version: 1.0\nGenerator: shimmy scripts/llama_wheel.py\n"
            f"Root-Is-Purelib: false\nTag: {tag}\n").encode())
        self.records.append(f"{self.info}/RECORD,,")
        self.archive.writestr(f"{self.info}/RECORD", "\n".join(self.records) + "\n")
        self.archive.close()


def tool(name: str) -> str:
    """cmake or ninja: the machine's, else PyPI's wheel of it put into this Python's
    environment (as llama-cpp-python's own build back-end would fetch them)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found:
        return found
    note(f"{name} is not installed: fetching PyPI's {name} into {sys.prefix}")
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q",
                    "install", name], check=True, stdout=sys.stderr)
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        fail(f"{name} is needed to build llama.cpp and could not be installed")
    return found


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def fail(text: str) -> None:
    note(text)
    raise SystemExit(1)


def wheel_names(variants: str) -> list[str]:
    """The wheels that serve ``--variants``, the best first; the last is the one to build.

    A CPU whose flags cannot be read gets every variant (no way to tell which it loads)."""
    flags = cpu_flags()
    if variants == "all" or flags is None:
        return ["all"]
    return ["all", best_variant(flags)]


def build_wheel(build: Build, variants: str) -> Path:
    if cached := build.cached_wheel(variants):
        return cached
    name = wheel_names(variants)[-1]
    build.fetch_sources()
    if name != "all":
        note(f"building llama.cpp (llama-cpp-python {VERSION}) for this CPU first: its core "
             f"and the '{name}' CPU variant; the other variants are built when the "
             "single-file binary is (scripts/build_binary.sh)")
    else:
        note(f"building llama.cpp (llama-cpp-python {VERSION}) with every CPU variant")
    core = build.core()
    modules = build.modules(None if name == "all" else [name])
    return build.make_wheel(name, modules, core)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", choices=("this", "all"), default="this",
                        help="this CPU's variant (or every one, where built), or every one")
    parser.add_argument("--cached", action="store_true",
                        help="only print the path of a wheel built before")
    parser.add_argument("--sources", action="store_true",
                        help="only fetch the sources, where no wheel is cached")
    args = parser.parse_args(argv)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "shimmy"
    build = Build(cache, shlex.split(os.environ.get("SHIMMY_EXTRA_CMAKE_ARGS", "")))
    if args.cached or args.sources:
        cached = build.cached_wheel(args.variants)
        if args.cached:
            if cached:
                print(cached)
            return 0 if cached else 1
        if not cached:
            build.fetch_sources()
        return 0
    print(build_wheel(build, args.variants))
    return 0


if __name__ == "__main__":
    sys.exit(main())
