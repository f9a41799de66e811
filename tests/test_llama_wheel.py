"""scripts/llama_wheel.py: which CPU variant it builds first, and the wheel it writes."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _load():
    sys.path.insert(0, str(REPO / "scripts"))
    path = REPO / "scripts" / "llama_wheel.py"
    spec = importlib.util.spec_from_file_location("llama_wheel", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["llama_wheel"] = module
    spec.loader.exec_module(module)
    return module


llama_wheel = _load()

BASE = "fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt"
AVX2 = f"{BASE} avx f16c fma avx2 bmi1 bmi2"
AVX512 = f"{AVX2} avx512f avx512cd avx512vl avx512dq avx512bw"


@pytest.mark.parametrize(("flags", "variant"), [
    ("fpu sse sse2", "x64"),
    (BASE, "sse42"),
    (f"{BASE} avx", "sandybridge"),
    (AVX2, "haswell"),  # AMD Zen 1-3, Intel Haswell to Comet Lake
    (f"{AVX2} avx_vnni", "alderlake"),
    (f"{AVX512}", "skylakex"),
    (f"{AVX512} avx512_vnni", "cascadelake"),
    (f"{AVX512} avx512vbmi avx512_vnni", "icelake"),
    (f"{AVX512} avx512vbmi avx512_vnni avx512_bf16", "zen4"),
    (f"{AVX512} avx512vbmi avx512_vnni avx512_bf16 avx_vnni amx_tile amx_int8",
     "sapphirerapids"),
    # avx512f alone is not ggml's AVX512 (it also checks cd, vl, dq and bw)
    (f"{AVX2} avx512f", "haswell"),
])
def test_the_variant_built_first_is_the_one_ggml_would_load(flags: str, variant: str) -> None:
    assert llama_wheel.best_variant(set(flags.split())) == variant


def test_every_variant_ggml_builds_is_known() -> None:
    cmake = llama_wheel.X86_VARIANTS
    assert len(cmake) == 14
    for features in cmake.values():
        assert set(features) <= set(llama_wheel.FEATURE_FLAGS)


def test_the_wheel_records_each_file_with_its_hash(tmp_path: Path) -> None:
    library = tmp_path / "libllama.so"
    library.write_bytes(b"\x7fELF not really")
    library.chmod(0o755)
    metadata = tmp_path / "PKG-INFO"
    metadata.write_text("Metadata-Version: 2.1\nName: llama_cpp_python\nVersion: 0.3.36\n")
    target = tmp_path / "out.whl"
    writer = llama_wheel.WheelWriter(target)
    writer.add("llama_cpp/lib/libllama.so", library)
    writer.finish(metadata)
    with zipfile.ZipFile(target) as wheel:
        info = f"{llama_wheel.DIST}.dist-info"
        records = wheel.read(f"{info}/RECORD").decode().splitlines()
        assert f"{info}/RECORD,," in records
        for line in records:
            name, digest, size = line.rsplit(",", 2)
            if name.endswith("RECORD"):
                continue
            data = wheel.read(name)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            assert digest == f"sha256={expected.decode()}" and int(size) == len(data)
        assert "Root-Is-Purelib: false" in wheel.read(f"{info}/WHEEL").decode()
        # the library keeps its execute bit, as pip installs it
        assert wheel.getinfo("llama_cpp/lib/libllama.so").external_attr >> 16 == 0o755


def test_a_gpu_backend_asked_for_is_built_with_this_cpus_variant(tmp_path: Path) -> None:
    build = llama_wheel.Build(tmp_path, ["-DGGML_CUDA=on", "-DGGML_VULKAN=OFF", "-DX=1"])
    assert build.gpu_modules() == ["ggml-cuda"]
    assert llama_wheel.Build(tmp_path, []).gpu_modules() == []
