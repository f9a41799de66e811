"""Read a GGUF file's header (metadata and tensor shapes) without touching the weights.

Standard library only, so that the server starts fast. The file is memory-mapped and
walked with ``struct.unpack_from``: big arrays such as the tokenizer vocabulary are
skipped by walking their lengths, never decoded.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
HEADER_SIZE = 24  # magic, version, tensor count, kv count

# Arrays longer than this (tokenizer vocabularies, merges, scores) stay out of metadata.
SHORT_ARRAY_LIMIT = 64
MAX_STRING_LENGTH = 256 * 1024 * 1024
MAX_KV_COUNT = 1 << 20
MAX_TENSOR_COUNT = 1 << 24
MAX_TENSOR_DIMS = 8
MAX_ARRAY_NESTING = 4

# Smallest possible encodings, used to reject counts that cannot fit in the file.
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, one-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # name length, n_dims, type, offset

_U8, _I8, _U16, _I16, _U32, _I32, _F32, _BOOL, _STRING, _ARRAY, _U64, _I64, _F64 = range(13)

_SCALAR_FORMATS: dict[int, struct.Struct] = {
    _U8: struct.Struct("<B"),
    _I8: struct.Struct("<b"),
    _U16: struct.Struct("<H"),
    _I16: struct.Struct("<h"),
    _U32: struct.Struct("<I"),
    _I32: struct.Struct("<i"),
    _F32: struct.Struct("<f"),
    _BOOL: struct.Struct("<?"),
    _U64: struct.Struct("<Q"),
    _I64: struct.Struct("<q"),
    _F64: struct.Struct("<d"),
}
_UINT32 = _SCALAR_FORMATS[_U32]
_UINT64 = _SCALAR_FORMATS[_U64]

# llama_ftype (llama.h), as stored in general.file_type.
FILE_TYPE_NAMES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
    22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0", 41: "Q2_0",
}  # fmt: skip
_FILE_TYPE_GUESSED = 1024

# ggml_type (ggml.h): name, elements per block, bytes per block (None: size unknown here).
GGML_TYPES: dict[int, tuple[str, int | None, int | None]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
    42: ("Q2_0", None, None),
}  # fmt: skip


class GGUFError(Exception):
    """The file is not a GGUF this reader can understand; the message says why."""


@dataclass
class GGUFInfo:
    path: Path
    architecture: str
    name: str | None
    parameters: int
    quantization: str
    context_length: int | None
    file_size: int
    chat_template: str | None = None
    kind: str = "model"  # "model" or "adapter"
    adapter_type: str | None = None
    split_count: int = 1
    split_index: int = 0
    version: int = 3
    tensor_count: int = 0
    matrix_types: frozenset[int] = frozenset()  # ggml types of the tensors of 2+ dimensions
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_adapter(self) -> bool:
        return self.kind == "adapter"

    def describe(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "parameters": self.parameters,
            "parameters_human": human_count(self.parameters),
            "quantization": self.quantization,
            "context_length": self.context_length,
            "file_size": self.file_size,
        }


def human_count(count: int) -> str:
    """268098176 -> "268M", 1_500_000_000 -> "1.5B"."""
    for scale, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if count >= scale:
            value = count / scale
            text = f"{value:.0f}" if value >= 100 else f"{value:.1f}".removesuffix(".0")
            return text + suffix
    return str(count)


def read_gguf_info(path: Path) -> GGUFInfo:
    """Parse the header of the GGUF at ``path``; raise GGUFError if it is not a usable GGUF."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size == 0:
                raise GGUFError("empty file")
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
                return _parse(_Cursor(buffer, size), path)
    except OSError as error:
        raise GGUFError(f"cannot read file: {error.strerror or error}") from error
    except struct.error as error:
        # unpack_from past the end of the mapping: the header claims more than the file holds.
        raise GGUFError(f"truncated file ({error})") from error


class _Cursor:
    """A read position over the mapped file; every read is bounds-checked."""

    def __init__(self, buffer: mmap.mmap, size: int) -> None:
        self.buffer = buffer
        self.size = size
        self.pos = 0

    def remaining(self) -> int:
        return self.size - self.pos

    def need(self, count: int, what: str) -> None:
        if count > self.remaining():
            raise GGUFError(
                f"truncated file: {what} needs {count} bytes at offset {self.pos}, "
                f"only {self.remaining()} left"
            )

    def unpack(self, fmt: struct.Struct, what: str) -> Any:
        self.need(fmt.size, what)
        (value,) = fmt.unpack_from(self.buffer, self.pos)
        self.pos += fmt.size
        return value

    def u32(self, what: str) -> int:
        return self.unpack(_UINT32, what)

    def u64(self, what: str) -> int:
        return self.unpack(_UINT64, what)

    def string(self, what: str) -> str:
        length = self.u64(f"{what} length")
        if length > MAX_STRING_LENGTH:
            raise GGUFError(f"absurd {what} length {length} at offset {self.pos - 8}")
        self.need(length, what)
        raw = self.buffer[self.pos : self.pos + length]
        self.pos += length
        return raw.decode("utf-8", errors="replace")


def _parse(cursor: _Cursor, path: Path) -> GGUFInfo:
    version = _read_preamble(cursor)
    tensor_count = cursor.u64("tensor count")
    kv_count = cursor.u64("metadata count")
    _check_count(cursor, kv_count, MAX_KV_COUNT, _MIN_KV_BYTES, "metadata key/value count")
    _check_count(cursor, tensor_count, MAX_TENSOR_COUNT, _MIN_TENSOR_INFO_BYTES, "tensor count")
    metadata = _read_metadata(cursor, kv_count)
    tensors = _read_tensor_infos(cursor, tensor_count)
    _check_tensor_data_fits(cursor, tensors, _alignment(metadata))
    return _build_info(path, cursor.size, version, metadata, tensors)


def _read_preamble(cursor: _Cursor) -> int:
    magic = cursor.buffer[:4]
    if len(magic) < 4 and GGUF_MAGIC.startswith(magic):
        raise GGUFError(f"truncated file: {cursor.size} bytes is shorter than a GGUF header")
    if magic != GGUF_MAGIC:
        raise GGUFError(f"not a GGUF file (magic {magic!r})")
    if cursor.size < HEADER_SIZE:
        raise GGUFError(f"truncated file: {cursor.size} bytes is shorter than a GGUF header")
    cursor.pos = 4
    version = cursor.u32("version")
    if version in SUPPORTED_VERSIONS:
        return version
    if int.from_bytes(version.to_bytes(4, "little"), "big") in SUPPORTED_VERSIONS:
        raise GGUFError("big-endian GGUF files are not supported")
    raise GGUFError(f"unsupported GGUF version {version} (supported: 2, 3)")


def _check_count(cursor: _Cursor, count: int, limit: int, min_bytes: int, what: str) -> None:
    if count > limit or count * min_bytes > cursor.remaining():
        raise GGUFError(f"absurd {what} {count} for a {cursor.size}-byte file")


def _read_metadata(cursor: _Cursor, kv_count: int) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for _ in range(kv_count):
        key = cursor.string("metadata key")
        value_type = cursor.u32(f"type of {key!r}")
        value = _read_value(cursor, value_type, key, depth=0)
        if value is not _SKIPPED:
            metadata[key] = value
    return metadata


_SKIPPED = object()


def _read_value(cursor: _Cursor, value_type: int, key: str, depth: int) -> Any:
    scalar = _SCALAR_FORMATS.get(value_type)
    if scalar is not None:
        return cursor.unpack(scalar, f"value of {key!r}")
    if value_type == _STRING:
        return cursor.string(f"value of {key!r}")
    if value_type == _ARRAY:
        return _read_array(cursor, key, depth)
    raise GGUFError(f"unknown value type {value_type} for key {key!r}")


def _read_array(cursor: _Cursor, key: str, depth: int) -> Any:
    if depth >= MAX_ARRAY_NESTING:
        raise GGUFError(f"arrays nested too deeply in {key!r}")
    element_type = cursor.u32(f"array type of {key!r}")
    count = cursor.u64(f"array length of {key!r}")
    element = _SCALAR_FORMATS.get(element_type)
    min_element_bytes = element.size if element is not None else 8
    if element_type not in _SCALAR_FORMATS and element_type not in (_STRING, _ARRAY):
        raise GGUFError(f"unknown array element type {element_type} for key {key!r}")
    if count * min_element_bytes > cursor.remaining():
        raise GGUFError(f"truncated file: array {key!r} claims {count} elements")
    if count <= SHORT_ARRAY_LIMIT:
        return [_read_value(cursor, element_type, key, depth + 1) for _ in range(count)]
    _skip_array(cursor, element_type, count, key, depth)
    return _SKIPPED


def _skip_array(cursor: _Cursor, element_type: int, count: int, key: str, depth: int) -> None:
    element = _SCALAR_FORMATS.get(element_type)
    if element is not None:
        cursor.pos += element.size * count  # bounds already checked by the caller
    elif element_type == _STRING:
        cursor.pos = _skip_strings(cursor.buffer, cursor.pos, count)
        if cursor.pos > cursor.size:
            raise GGUFError(f"truncated file: strings of array {key!r} run past the end")
    else:
        for _ in range(count):
            _read_array(cursor, key, depth + 1)


def _skip_strings(buffer: mmap.mmap, pos: int, count: int) -> int:
    # Hot loop (262k tokenizer strings): locals only. Reading past the end raises struct.error.
    unpack_length: Callable[[mmap.mmap, int], tuple[int]] = _UINT64.unpack_from
    try:
        for _ in range(count):
            pos += 8 + unpack_length(buffer, pos)[0]
    except (struct.error, OverflowError) as error:
        raise GGUFError(f"truncated file: string array runs past the end ({error})") from error
    return pos


@dataclass
class _TensorInfo:
    name: str
    dims: tuple[int, ...]
    ggml_type: int
    offset: int

    @property
    def elements(self) -> int:
        count = 1
        for dim in self.dims:
            count *= dim
        return count


def _read_tensor_infos(cursor: _Cursor, tensor_count: int) -> list[_TensorInfo]:
    tensors = []
    for index in range(tensor_count):
        name = cursor.string(f"name of tensor {index}")
        n_dims = cursor.u32(f"dimension count of {name!r}")
        if n_dims > MAX_TENSOR_DIMS:
            raise GGUFError(f"absurd dimension count {n_dims} for tensor {name!r}")
        dims = tuple(cursor.u64(f"dimensions of {name!r}") for _ in range(n_dims))
        ggml_type = cursor.u32(f"type of {name!r}")
        offset = cursor.u64(f"data offset of {name!r}")
        tensors.append(_TensorInfo(name, dims, ggml_type, offset))
    return tensors


def _alignment(metadata: dict[str, Any]) -> int:
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GGUFError(f"invalid general.alignment {alignment!r}")
    return alignment


def _check_tensor_data_fits(cursor: _Cursor, tensors: list[_TensorInfo], alignment: int) -> None:
    """Catch files cut short inside the weights (interrupted downloads) before llama.cpp does."""
    data_start = -(-cursor.pos // alignment) * alignment
    for tensor in tensors:
        nbytes = _tensor_bytes(tensor)
        if nbytes is None:
            continue
        end = data_start + tensor.offset + nbytes
        if end > cursor.size:
            raise GGUFError(
                f"truncated file: tensor {tensor.name!r} ends at byte {end}, file has {cursor.size}"
            )


def _tensor_bytes(tensor: _TensorInfo) -> int | None:
    _, block_elements, block_bytes = GGML_TYPES.get(tensor.ggml_type, ("", None, None))
    if block_elements is None or block_bytes is None:
        return None
    return -(-tensor.elements // block_elements) * block_bytes


def _build_info(
    path: Path, size: int, version: int, metadata: dict[str, Any], tensors: list[_TensorInfo]
) -> GGUFInfo:
    architecture = _text(metadata.get("general.architecture")) or "unknown"
    is_adapter = metadata.get("general.type") == "adapter" or any(
        key.startswith("adapter.") for key in metadata
    )
    return GGUFInfo(
        path=path,
        architecture=architecture,
        name=_text(metadata.get("general.name")),
        parameters=sum(tensor.elements for tensor in tensors),
        quantization=_quantization(metadata.get("general.file_type"), tensors),
        context_length=_integer(metadata.get(f"{architecture}.context_length")),
        file_size=size,
        chat_template=_text(metadata.get("tokenizer.chat_template")),
        kind="adapter" if is_adapter else "model",
        adapter_type=_text(metadata.get("adapter.type")),
        split_count=_integer(metadata.get("split.count")) or 1,
        split_index=_integer(metadata.get("split.no")) or 0,
        version=version,
        tensor_count=len(tensors),
        matrix_types=frozenset(t.ggml_type for t in tensors if len(t.dims) > 1),
        metadata=metadata,
    )


def _quantization(file_type: Any, tensors: list[_TensorInfo]) -> str:
    if _integer(file_type) is not None:
        name = FILE_TYPE_NAMES.get(file_type & ~_FILE_TYPE_GUESSED)
        if name is not None:
            return name
    dominant = _dominant_type(tensors)
    if dominant is None:
        return "unknown"
    return GGML_TYPES.get(dominant, (f"type{dominant}", None, None))[0]


def _dominant_type(tensors: list[_TensorInfo]) -> int | None:
    elements_by_type: dict[int, int] = {}
    for tensor in tensors:
        elements_by_type[tensor.ggml_type] = (
            elements_by_type.get(tensor.ggml_type, 0) + tensor.elements
        )
    if not elements_by_type:
        return None
    return max(elements_by_type, key=lambda ggml_type: elements_by_type[ggml_type])


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
