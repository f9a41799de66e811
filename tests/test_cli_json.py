"""``--json`` on list, discover, probe and diag: one JSON document on stdout for scripts,
the same exit codes as the text output, and advice on stderr."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cli import SPELLER, ZEBRA, home, models_dir, run_shimmy, without_embedded

import shimmy

__all__ = ["home", "models_dir", "without_embedded"]  # fixtures shared with test_cli


def run_json(home: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, Any]:
    result = run_shimmy(home, *args, "--json", **env)
    return result, json.loads(result.stdout)


def test_list_json(home: Path, models_dir: Path) -> None:
    result, data = run_json(home, "list", "--model-dirs", str(models_dir))
    assert result.returncode == 0, result.stderr
    assert data["default"] == SPELLER
    assert [m["name"] for m in data["models"]] == [SPELLER, ZEBRA]
    speller, zebra = data["models"]
    assert speller["default"] is True and zebra["default"] is False
    assert speller["path"] == str(models_dir / f"{SPELLER}.gguf")
    assert speller["source"] == "--model-dirs"
    assert speller["metadata"]["architecture"] == "llama"
    assert speller["metadata"]["context_length"] == 512
    assert speller["size"] == (models_dir / f"{SPELLER}.gguf").stat().st_size


def test_list_json_without_models(home: Path, without_embedded: dict[str, str]) -> None:
    empty = home / "empty"
    empty.mkdir()
    result, data = run_json(home, "list", "--model-dirs", str(empty), **without_embedded)
    assert result.returncode == 1
    assert data == {"default": None, "models": []}
    assert "No models found" in result.stderr
    assert str(empty) in result.stderr  # where it looked
    assert "--model-path" in result.stderr  # how to point it at a file


def test_discover_json(home: Path, models_dir: Path) -> None:
    result, data = run_json(home, "discover", "--model-dirs", str(models_dir))
    assert result.returncode == 0, result.stderr
    searched = {place["source"]: place for place in data["searched"]}
    assert searched["--model-dirs"] == {"source": "--model-dirs", "path": str(models_dir),
                                        "exists": True}
    assert searched["~/models"]["exists"] is False
    assert [m["name"] for m in data["models"]] == [SPELLER, ZEBRA]
    [skipped] = data["skipped"]
    assert skipped["path"] == str(models_dir / "corrupt.gguf")
    assert "not a GGUF file" in skipped["reason"]


def test_probe_json(home: Path, models_dir: Path) -> None:
    result, data = run_json(home, "probe", "--model-dirs", str(models_dir), ZEBRA)
    assert result.returncode == 0, result.stderr
    assert data["ok"] is True
    assert data["model"] == ZEBRA
    assert data["architecture"] == "llama"
    assert data["first_token"] == "x"  # "Hello" ends in "o", not in "xyz": the text starts over
    assert data["prompt_tokens"] > 0
    for key in ("load_ms", "first_token_ms", "memory_bytes", "file_size"):
        assert isinstance(data[key], int | float) and data[key] >= 0, key
    # the KV cache's pages were handed back: resident as its cells fill, not in memory_bytes
    assert data["kv_cache_bytes"] > 0
    assert data["context"] == 512  # the model's trained context caps the default 8192
    assert data["output_head"].startswith("llama.cpp's (")  # an F32 output matrix


def test_probe_json_failure(home: Path, models_dir: Path) -> None:
    result, data = run_json(home, "probe", "--model-dirs", str(models_dir), "nope")
    assert result.returncode == 1
    assert data["ok"] is False
    assert "'nope' is not available" in data["error"]
    assert SPELLER in data["hint"] and "shimmy list" in data["hint"]
    assert "probe: FAILED" in result.stderr


@pytest.fixture
def held_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_diag_json(home: Path, models_dir: Path, held_port: int) -> None:
    result, data = run_json(home, "diag", "--model-dirs", str(models_dir),
                            "--port", str(held_port))
    assert result.returncode == 0, result.stderr
    assert data["shimmy"] == shimmy.__version__
    assert data["llama_cpp"]["loadable"] is True
    assert "CPU" in data["llama_cpp"]["system_info"]
    assert data["cpu"]["threads"] >= 1
    assert set(data["llama_cpp"]["output_head"]) == {"obstacle"}
    assert data["memory"]["total_bytes"] > 0
    port = data["port"]
    assert (port["host"], port["port"], port["free"]) == ("127.0.0.1", held_port, False)
    assert port["held_by"]["pid"] == os.getpid()  # this test process holds it
    assert [m["name"] for m in data["discovery"]["models"]] == [SPELLER, ZEBRA]
