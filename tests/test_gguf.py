from __future__ import annotations

import random
import time
from pathlib import Path

import gguf
import pytest
from gguf_factory import (
    DEFAULT_PARAMETERS,
    write_bad_magic,
    write_gguf,
    write_huge_string_length,
    write_truncated,
    write_unknown_value_type,
    write_with_counts,
    write_with_version,
)

from shimmy.models.gguf import (
    FILE_TYPE_NAMES,
    GGML_TYPES,
    GGUFError,
    GGUFInfo,
    human_count,
    read_gguf_info,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return write_gguf(path, file_type=15, chat_template="{{ messages }}", context_length=4096)


def test_reads_all_fields(tiny: Path) -> None:
    info = read_gguf_info(tiny)
    assert info.path == tiny
    assert info.architecture == "llama"
    assert info.name == "Tiny Llama"
    assert info.parameters == DEFAULT_PARAMETERS
    assert info.quantization == "Q4_K_M"
    assert info.context_length == 4096
    assert info.file_size == tiny.stat().st_size
    assert info.chat_template == "{{ messages }}"
    assert info.kind == "model" and not info.is_adapter
    assert info.adapter_type is None
    assert (info.split_count, info.split_index) == (1, 0)
    assert info.version == 3 and info.tensor_count == 2
    assert info.metadata["general.tags"] == ["tiny", "test"]
    assert info.metadata["general.file_type"] == 15


def test_describe_is_json_ready(tiny: Path) -> None:
    assert read_gguf_info(tiny).describe() == {
        "architecture": "llama",
        "parameters": DEFAULT_PARAMETERS,
        "parameters_human": "136",
        "quantization": "Q4_K_M",
        "context_length": 4096,
        "file_size": tiny.stat().st_size,
    }


def test_optional_fields_missing(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "bare.gguf", name=None, context_length=None, file_type=None)
    info = read_gguf_info(path)
    assert info.name is None and info.context_length is None and info.chat_template is None
    assert info.quantization == "F32"  # from the dominant tensor type


def test_parameter_count_sums_all_dims(tmp_path: Path) -> None:
    shapes = {"a": (3, 5, 7), "b": (11,), "c": (2, 2, 2, 2)}
    info = read_gguf_info(write_gguf(tmp_path / "p.gguf", tensors=shapes))
    assert info.parameters == 3 * 5 * 7 + 11 + 16
    assert info.tensor_count == 3


def test_adapter_and_split_fields(tmp_path: Path) -> None:
    adapter = read_gguf_info(write_gguf(tmp_path / "lora.gguf", adapter=True))
    assert adapter.kind == "adapter" and adapter.adapter_type == "lora"
    shard = read_gguf_info(write_gguf(tmp_path / "s.gguf", split=(1, 3)))
    assert (shard.split_count, shard.split_index) == (3, 1)


def test_long_arrays_are_skipped_but_tensors_still_read(tmp_path: Path) -> None:
    info = read_gguf_info(write_gguf(tmp_path / "vocab.gguf", long_array=1000))
    assert "tokenizer.ggml.tokens" not in info.metadata
    assert "tokenizer.ggml.scores" not in info.metadata
    assert info.parameters == DEFAULT_PARAMETERS


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (136, "136"),
        (268_098_176, "268M"),
        (1_500_000_000, "1.5B"),
        (7_241_732_096, "7.2B"),
        (70_553_706_496, "70.6B"),
        (2048, "2K"),
    ],
)
def test_human_count(count: int, text: str) -> None:
    assert human_count(count) == text


def test_name_tables_match_gguf_package() -> None:
    for file_type in gguf.LlamaFileType:
        if file_type != gguf.LlamaFileType.GUESSED:
            expected = file_type.name.removeprefix("ALL_").removeprefix("MOSTLY_")
            assert FILE_TYPE_NAMES[file_type.value] == expected
    for quant, (block_elements, block_bytes) in gguf.GGML_QUANT_SIZES.items():
        assert GGML_TYPES[quant.value] == (quant.name, block_elements, block_bytes)


def test_bad_magic(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match=r"not a GGUF file \(magic b'PK\\x03\\x04'\)"):
        read_gguf_info(write_bad_magic(tmp_path / "zip.gguf"))


def test_empty_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(GGUFError, match="empty file"):
        read_gguf_info(tmp_path / "empty.gguf")
    with pytest.raises(GGUFError, match="cannot read file"):
        read_gguf_info(tmp_path / "absent.gguf")
    with pytest.raises(GGUFError, match="cannot read file"):
        read_gguf_info(tmp_path)


@pytest.mark.parametrize("version", [1, 4, 0xFFFFFFFF])
def test_unsupported_version(tiny: Path, tmp_path: Path, version: int) -> None:
    with pytest.raises(GGUFError, match=f"unsupported GGUF version {version}"):
        read_gguf_info(write_with_version(tiny, tmp_path / "v.gguf", version))


def test_version_2_is_read(tiny: Path, tmp_path: Path) -> None:
    assert read_gguf_info(write_with_version(tiny, tmp_path / "v2.gguf", 2)).version == 2


def test_big_endian_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="big-endian"):
        read_gguf_info(write_gguf(tmp_path / "be.gguf", big_endian=True))


@pytest.mark.parametrize(("tensors", "kvs"), [(2**63, 3), (2, 2**62), (2**24 + 1, 3)])
def test_absurd_counts(tiny: Path, tmp_path: Path, tensors: int, kvs: int) -> None:
    with pytest.raises(GGUFError, match="absurd"):
        read_gguf_info(write_with_counts(tiny, tmp_path / "c.gguf", tensors, kvs))


def test_absurd_string_length(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="absurd metadata key length"):
        read_gguf_info(write_huge_string_length(tiny, tmp_path / "s.gguf"))


def test_unknown_value_type(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match=r"unknown value type 99 for key 'general\.architecture'"):
        read_gguf_info(write_unknown_value_type(tiny, tmp_path / "t.gguf"))


def test_every_truncation_is_a_gguf_error(tmp_path: Path) -> None:
    source = write_gguf(tmp_path / "full.gguf", long_array=70, chat_template="x")
    full = source.stat().st_size
    target = tmp_path / "cut.gguf"
    parsed = []
    for length in range(full):
        write_truncated(source, target, length)
        try:  # not pytest.raises: it costs milliseconds per call, and this runs 2000 times
            read_gguf_info(target)
            parsed.append(length)
        except GGUFError:
            pass
    assert parsed == []
    assert read_gguf_info(source).parameters == DEFAULT_PARAMETERS


def test_random_corruption_raises_only_gguf_error(tmp_path: Path) -> None:
    source = write_gguf(tmp_path / "full.gguf", long_array=70, chat_template="x")
    raw = source.read_bytes()
    target = tmp_path / "bad.gguf"
    rng = random.Random(1234)
    for _ in range(300):
        corrupt = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            corrupt[rng.randrange(8, 1200)] = rng.randrange(256)
        target.write_bytes(bytes(corrupt))
        try:
            info = read_gguf_info(target)
        except GGUFError:
            continue
        assert isinstance(info, GGUFInfo)


def test_real_tokenizer_sized_header_is_fast(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "vocab.gguf", long_array=50_000)
    start = time.perf_counter()
    info = read_gguf_info(path)
    elapsed = time.perf_counter() - start
    assert info.parameters == DEFAULT_PARAMETERS
    assert elapsed < 0.25, f"header read took {elapsed:.3f}s"
