"""Find GGUF models on disk: configured paths, common folders and other tools' stores.

Only headers are read (see ``gguf.read_gguf_info``), so listing many models stays fast.
Sources are searched in priority order; the first model found is the default one.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from shimmy.models.embedded import PACKAGE_MODULE, embedded_model_path
from shimmy.models.gguf import GGUFError, GGUFInfo, read_gguf_info

MAX_SCAN_DEPTH = 4
SPLIT_NAME = re.compile(r"^(?P<base>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})(?P<ext>\.gguf)$", re.I)
OLLAMA_DEFAULT_REGISTRY = "registry.ollama.ai"
OLLAMA_MODEL_MEDIA = "application/vnd.ollama.image.model"
OLLAMA_ADAPTER_MEDIA = "application/vnd.ollama.image.adapter"
OLLAMA_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")


@dataclass
class SearchedPlace:
    source: str
    path: Path
    exists: bool


@dataclass
class Skipped:
    path: Path
    reason: str


@dataclass
class ModelEntry:
    name: str
    path: Path  # what llama.cpp loads: the file itself, or the first shard of a split model
    shards: list[Path]
    source: str
    info: GGUFInfo
    loras: list[Path] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.info.file_size

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "source": self.source,
            "size": self.size,
            "shards": [str(shard) for shard in self.shards],
            "metadata": self.info.describe(),
            "loras": [str(lora) for lora in self.loras],
        }


@dataclass
class DiscoveryReport:
    searched: list[SearchedPlace] = field(default_factory=list)
    models: list[ModelEntry] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def default(self) -> ModelEntry | None:
        return self.models[0] if self.models else None

    def describe(self) -> dict[str, Any]:
        return {
            "searched": [
                {"source": place.source, "path": str(place.path), "exists": place.exists}
                for place in self.searched
            ],
            "models": [model.describe() for model in self.models],
            "skipped": [{"path": str(skip.path), "reason": skip.reason} for skip in self.skipped],
        }


@dataclass
class _Candidate:
    """A file that may be a model, before its header has been read."""

    path: Path
    source: str
    name: str
    shards: list[Path]
    loras: list[Path] = field(default_factory=list)


@dataclass
class _Place:
    source: str
    path: Path
    kind: str  # "file", "dir", "huggingface" or "ollama"


def discover(
    model_path: Path | None = None,
    model_dirs: Sequence[Path] = (),
    *,
    env: Mapping[str, str] = os.environ,
    home: Path | None = None,
    cwd: Path | None = None,
    include_embedded: bool = True,
) -> DiscoveryReport:
    """Search every source in priority order and report models, places searched and skips."""
    home = home if home is not None else Path.home()
    cwd = cwd if cwd is not None else Path.cwd()
    report = DiscoveryReport()
    candidates: list[_Candidate] = []
    scanned: set[str] = set()
    for place in _places(model_path, model_dirs, env, home, cwd):
        exists = _is(place.path.exists)
        report.searched.append(SearchedPlace(place.source, place.path, exists))
        if not exists:
            if place.kind == "file":
                report.skipped.append(Skipped(place.path, "no such file"))
            continue
        real = os.path.realpath(place.path)
        if real in scanned:
            continue  # e.g. ./models when the working directory is home
        scanned.add(real)
        candidates.extend(_collect(place, report.skipped))
    adapters = _load(candidates, report)
    # a model the user named explicitly is never silently replaced by the embedded one
    explicit = model_path is not None or bool(env.get("SHIMMY_BASE_GGUF"))
    if not report.models and include_embedded and not explicit:
        _load(_embedded_candidates(report), report)
    _attach_adapters(adapters, report)
    _attach_env_lora(env, home, cwd, report)
    return report


def _places(
    model_path: Path | None,
    model_dirs: Sequence[Path],
    env: Mapping[str, str],
    home: Path,
    cwd: Path,
) -> Iterator[_Place]:
    if model_path is not None:
        yield _Place("--model-path", _absolute(model_path, home, cwd), "file")
    if env.get("SHIMMY_BASE_GGUF", "").strip():
        yield _Place("SHIMMY_BASE_GGUF", _absolute(env["SHIMMY_BASE_GGUF"], home, cwd), "file")
    for directory in model_dirs:
        yield _Place("--model-dirs", _absolute(directory, home, cwd), "dir")
    for directory in env.get("SHIMMY_MODEL_PATHS", "").split(";"):
        if directory.strip():
            yield _Place("SHIMMY_MODEL_PATHS", _absolute(directory, home, cwd), "dir")
    yield _Place("./models", cwd / "models", "dir")
    yield _Place("~/models", home / "models", "dir")
    yield _Place("huggingface", _huggingface_cache(env, home, cwd), "huggingface")
    for root in _ollama_roots(env, home, cwd):
        yield _Place("ollama", root, "ollama")
    for root in _lmstudio_roots(env, home, cwd):
        yield _Place("lmstudio", root, "dir")


def _absolute(path: Path | str, home: Path, cwd: Path) -> Path:
    text = str(path).strip()
    if text == "~" or text.startswith(("~/", "~\\")):
        text = str(home) + text[1:]
    resolved = Path(text)
    if not resolved.is_absolute():
        resolved = cwd / resolved
    return Path(os.path.normpath(resolved))


def _huggingface_cache(env: Mapping[str, str], home: Path, cwd: Path) -> Path:
    if env.get("HF_HUB_CACHE"):
        return _absolute(env["HF_HUB_CACHE"], home, cwd)
    if env.get("HF_HOME"):
        return _absolute(env["HF_HOME"], home, cwd) / "hub"
    if env.get("XDG_CACHE_HOME"):
        return _absolute(env["XDG_CACHE_HOME"], home, cwd) / "huggingface" / "hub"
    return home / ".cache" / "huggingface" / "hub"


def _ollama_roots(env: Mapping[str, str], home: Path, cwd: Path) -> list[Path]:
    roots = [home / ".ollama" / "models"]
    if env.get("OLLAMA_MODELS"):
        roots.insert(0, _absolute(env["OLLAMA_MODELS"], home, cwd))
    return roots


def _lmstudio_roots(env: Mapping[str, str], home: Path, cwd: Path) -> list[Path]:
    roots = [home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"]
    if env.get("LMSTUDIO_MODELS"):
        roots.insert(0, _absolute(env["LMSTUDIO_MODELS"], home, cwd))
    return roots


def _collect(place: _Place, skipped: list[Skipped]) -> list[_Candidate]:
    if place.kind == "ollama":
        return _ollama_candidates(place, skipped)
    if place.kind == "huggingface":
        return _huggingface_candidates(place, skipped)
    if place.path.is_dir():
        return _file_candidates(_scan_dir(place.path, skipped), place.source, skipped)
    return _file_candidates([place.path], place.source, skipped)


# --- directories -------------------------------------------------------------------------


def _scan_dir(root: Path, skipped: list[Skipped], max_depth: int = MAX_SCAN_DEPTH) -> list[Path]:
    """``*.gguf`` files under root, shallow ones first; follows symlinks but not loops."""
    found: list[Path] = []
    visited: set[tuple[int, int]] = set()
    level = [root]
    for _ in range(max_depth + 1):
        subdirectories: list[Path] = []
        for directory in level:
            subdirectories.extend(_scan_one_dir(directory, visited, found, skipped))
        level = subdirectories
    return found


def _scan_one_dir(
    directory: Path, visited: set[tuple[int, int]], found: list[Path], skipped: list[Skipped]
) -> list[Path]:
    try:
        status = directory.stat()
        if (status.st_dev, status.st_ino) in visited:
            return []
        visited.add((status.st_dev, status.st_ino))
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except OSError:
        return []
    subdirectories = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        if _is(entry.is_dir):
            subdirectories.append(path)
        elif entry.name.lower().endswith(".gguf"):
            if _is(entry.is_file):
                found.append(path)
            elif _is(entry.is_symlink):
                skipped.append(Skipped(path, "broken symlink"))
    return subdirectories


def _is(check: Callable[[], bool]) -> bool:
    try:
        return bool(check())
    except OSError:
        return False


def _file_candidates(files: list[Path], source: str, skipped: list[Skipped]) -> list[_Candidate]:
    """One candidate per model: split shards fold into the candidate of their first shard."""
    candidates = []
    seen_splits: set[Path] = set()
    for path in files:
        split = SPLIT_NAME.match(path.name)
        if split is None:
            candidates.append(_Candidate(path, source, path.stem.lower(), [path]))
            continue
        first = _shard_path(path, split, 1)
        if first in seen_splits:
            continue
        seen_splits.add(first)
        candidate = _split_candidate(first, split, source, skipped)
        if candidate is not None:
            candidates.append(candidate)
    return candidates


def _shard_path(path: Path, split: re.Match[str], index: int) -> Path:
    name = f"{split['base']}-{index:05d}-of-{split['count']}{split['ext']}"
    return path.with_name(name)


def _split_candidate(
    first: Path, split: re.Match[str], source: str, skipped: list[Skipped]
) -> _Candidate | None:
    count = int(split["count"])
    shards = [_shard_path(first, split, index) for index in range(1, count + 1)]
    missing = [shard.name for shard in shards if not shard.is_file()]
    if missing:
        skipped.append(Skipped(first, f"split model is missing shard(s): {', '.join(missing)}"))
        return None
    return _Candidate(first, source, split["base"].lower(), shards)


# --- Hugging Face hub cache ----------------------------------------------------------------


def _huggingface_candidates(place: _Place, skipped: list[Skipped]) -> list[_Candidate]:
    candidates = []
    for repo in sorted(place.path.glob("models--*")):
        for snapshot in _snapshots_main_first(repo):
            files = _scan_dir(snapshot, skipped)
            candidates.extend(_file_candidates(files, place.source, skipped))
    return candidates


def _snapshots_main_first(repo: Path) -> list[Path]:
    """The revision ``refs/main`` points at first, then the others by name."""
    snapshots = sorted(path for path in (repo / "snapshots").glob("*") if path.is_dir())
    try:
        main = (repo / "refs" / "main").read_text(encoding="utf-8").strip()
    except OSError:
        return snapshots
    return sorted(snapshots, key=lambda snapshot: snapshot.name != main)


# --- Ollama --------------------------------------------------------------------------------


def _ollama_candidates(place: _Place, skipped: list[Skipped]) -> list[_Candidate]:
    manifests = place.path / "manifests"
    candidates = []
    for manifest in sorted(manifests.glob("*/*/*/*")):
        if manifest.is_file():
            candidate = _ollama_candidate(place, manifest, skipped)
            if candidate is not None:
                candidates.append(candidate)
    return candidates


class _ManifestProblem(Exception):
    pass


def _ollama_candidate(place: _Place, manifest: Path, skipped: list[Skipped]) -> _Candidate | None:
    try:
        by_media = _ollama_layers_by_media(manifest)
        models = by_media.get(OLLAMA_MODEL_MEDIA, [])
        if len(models) != 1:
            raise _ManifestProblem("Ollama manifest has no single GGUF model layer")
        blob = _ollama_blob(place.path, models[0])
        loras = [_ollama_blob(place.path, d) for d in by_media.get(OLLAMA_ADAPTER_MEDIA, [])]
    except _ManifestProblem as problem:
        skipped.append(Skipped(manifest, str(problem)))
        return None
    name = _ollama_name(place.path / "manifests", manifest)
    return _Candidate(blob, place.source, name, [blob], loras)


def _ollama_layers_by_media(manifest: Path) -> dict[str, list[str]]:
    try:
        layers = json.loads(manifest.read_text(encoding="utf-8"))["layers"]
        by_media: dict[str, list[str]] = {}
        for layer in layers:
            by_media.setdefault(str(layer["mediaType"]), []).append(str(layer["digest"]))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise _ManifestProblem(f"unreadable Ollama manifest: {error!r}") from error
    return by_media


def _ollama_blob(root: Path, digest: str) -> Path:
    match = OLLAMA_DIGEST.match(digest)
    if match is None:
        raise _ManifestProblem(f"invalid Ollama blob digest {digest!r}")
    blob = root / "blobs" / f"sha256-{match[1]}"
    if not blob.is_file():
        raise _ManifestProblem(f"Ollama blob {blob.name} is missing")
    return blob


def _ollama_name(manifests: Path, manifest: Path) -> str:
    """Name the model as ``ollama list`` does: ``model:tag``, qualified when not official."""
    registry, namespace, model, tag = manifest.relative_to(manifests).parts
    name = f"{model}:{tag}"
    if namespace != "library" or registry != OLLAMA_DEFAULT_REGISTRY:
        name = f"{namespace}/{name}"
    if registry != OLLAMA_DEFAULT_REGISTRY:
        name = f"{registry}/{name}"
    return name.lower()


# --- embedded ------------------------------------------------------------------------------


def _embedded_candidates(report: DiscoveryReport) -> list[_Candidate]:
    try:
        path = embedded_model_path()
    except (OSError, ValueError) as error:
        report.skipped.append(Skipped(Path(PACKAGE_MODULE), f"embedded model unavailable: {error}"))
        return []
    if path is None:
        return []
    report.searched.append(SearchedPlace("embedded", path, path.exists()))
    return [_Candidate(path, "embedded", path.stem.lower(), [path])]


# --- reading headers -----------------------------------------------------------------------


def _load(candidates: list[_Candidate], report: DiscoveryReport) -> list[tuple[Path, GGUFInfo]]:
    """Read each candidate's header; add models to the report and return the adapters."""
    adapters = []
    taken = {model.name: model for model in report.models}
    for candidate in candidates:
        try:
            info = _read_model_info(candidate)
        except GGUFError as error:
            report.skipped.append(Skipped(candidate.path, str(error)))
            continue
        if info.is_adapter:
            adapters.append((candidate.path, info))
        elif _is_projector(info):
            report.skipped.append(Skipped(candidate.path, "multimodal projector, not a model"))
        elif candidate.name in taken:
            shadow = taken[candidate.name].path
            report.skipped.append(Skipped(candidate.path, f"shadowed by {shadow}"))
        else:
            entry = ModelEntry(
                candidate.name,
                candidate.path,
                candidate.shards,
                candidate.source,
                info,
                list(candidate.loras),
            )
            taken[candidate.name] = entry
            report.models.append(entry)
    return adapters


def _is_projector(info: GGUFInfo) -> bool:
    # mmproj files (vision encoders) sit next to models in many Hugging Face repos.
    return info.architecture == "clip" or info.metadata.get("general.type") == "mmproj"


def _read_model_info(candidate: _Candidate) -> GGUFInfo:
    first = read_gguf_info(candidate.path)
    if first.split_count != len(candidate.shards):
        raise GGUFError(
            f"header says split.count={first.split_count} "
            f"but {len(candidate.shards)} shard file(s) belong to it"
        )
    if len(candidate.shards) == 1:
        return first
    parameters, file_size = first.parameters, first.file_size
    for shard in candidate.shards[1:]:
        try:
            info = read_gguf_info(shard)
        except GGUFError as error:
            raise GGUFError(f"shard {shard.name}: {error}") from error
        parameters += info.parameters
        file_size += info.file_size
    return replace(first, parameters=parameters, file_size=file_size)


# --- LoRA adapters -------------------------------------------------------------------------


def _attach_adapters(adapters: list[tuple[Path, GGUFInfo]], report: DiscoveryReport) -> None:
    for path, info in adapters:
        base = _base_for_adapter(path, info, report.models)
        if base is None:
            reason = "LoRA adapter without a unique base model in its folder or by name prefix"
            report.skipped.append(Skipped(path, reason))
        else:
            base.loras.append(path)


def _base_for_adapter(path: Path, info: GGUFInfo, models: list[ModelEntry]) -> ModelEntry | None:
    compatible = [model for model in models if _same_architecture(model.info, info)]
    same_folder = [model for model in compatible if model.path.parent == path.parent]
    if len(same_folder) == 1:
        return same_folder[0]
    adapter_name = path.stem.lower()
    by_prefix = [m for m in compatible if adapter_name.startswith(_file_model_name(m.path))]
    if not by_prefix:
        return None
    longest = max(len(_file_model_name(model.path)) for model in by_prefix)
    best = [model for model in by_prefix if len(_file_model_name(model.path)) == longest]
    return best[0] if len(best) == 1 else None


def _file_model_name(path: Path) -> str:
    split = SPLIT_NAME.match(path.name)
    return (split["base"] if split else path.stem).lower()


def _same_architecture(model: GGUFInfo, adapter: GGUFInfo) -> bool:
    unknown = "unknown"
    return unknown in (model.architecture, adapter.architecture) or (
        model.architecture == adapter.architecture
    )


def _attach_env_lora(
    env: Mapping[str, str], home: Path, cwd: Path, report: DiscoveryReport
) -> None:
    if not env.get("SHIMMY_LORA_GGUF", "").strip():
        return
    path = _absolute(env["SHIMMY_LORA_GGUF"], home, cwd)
    report.searched.append(SearchedPlace("SHIMMY_LORA_GGUF", path, path.exists()))
    reason = _env_lora_problem(path, report.default)
    if reason is not None:
        report.skipped.append(Skipped(path, reason))
    elif report.default is not None and path not in report.default.loras:
        report.default.loras.append(path)


def _env_lora_problem(path: Path, default: ModelEntry | None) -> str | None:
    if not path.is_file():
        return "no such file"
    try:
        info = read_gguf_info(path)
    except GGUFError as error:
        return str(error)
    if not info.is_adapter:
        return "not a LoRA adapter (general.type is not 'adapter')"
    if default is None:
        return "no model to attach the LoRA adapter to"
    return None
