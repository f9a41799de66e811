"""Write tiny GGUF files (valid and corrupt) for tests."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from gguf import GGUFEndian, GGUFWriter

# F32 tensors whose byte sizes are multiples of 32, so the files end without padding and
# every truncation cuts into something the reader checks.
DEFAULT_TENSORS: dict[str, tuple[int, ...]] = {
    "token_embd.weight": (16, 8),  # 128 parameters
    "output_norm.weight": (8,),  # 8 parameters
}
DEFAULT_PARAMETERS = 136
ADAPTER_TENSORS: dict[str, tuple[int, ...]] = {
    "blk.0.attn_q.weight.lora_a": (2, 8),
    "blk.0.attn_q.weight.lora_b": (8, 2),
}
# Offset of the value type of the first key/value (general.architecture, written first).
FIRST_VALUE_TYPE_OFFSET = 24 + 8 + len("general.architecture")


def write_gguf(
    path: Path,
    *,
    arch: str = "llama",
    name: str | None = "Tiny Llama",
    context_length: int | None = 2048,
    file_type: int | None = 0,
    chat_template: str | None = None,
    adapter: bool = False,
    split: tuple[int, int] | None = None,
    tensors: dict[str, tuple[int, ...]] | None = None,
    long_array: int = 0,
    big_endian: bool = False,
) -> Path:
    """A small valid GGUF; ``split`` is (split.no, split.count)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    endian = GGUFEndian.BIG if big_endian else GGUFEndian.LITTLE
    writer = GGUFWriter(path, arch, endianess=endian)
    if name is not None:
        writer.add_name(name)
    if context_length is not None:
        writer.add_context_length(context_length)
    if file_type is not None:
        writer.add_file_type(file_type)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    if adapter:
        writer.add_type("adapter")
        writer.add_string("adapter.type", "lora")
        writer.add_float32("adapter.lora.alpha", 16.0)
    if split is not None:
        writer.add_uint16("split.no", split[0])
        writer.add_uint16("split.count", split[1])
    writer.add_array("general.tags", ["tiny", "test"])
    if long_array:
        writer.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(long_array)])
        writer.add_array("tokenizer.ggml.scores", [0.5] * long_array)
    default = ADAPTER_TENSORS if adapter else DEFAULT_TENSORS
    for tensor_name, shape in (default if tensors is None else tensors).items():
        writer.add_tensor(tensor_name, np.ones(shape, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_split(directory: Path, base: str, count: int, *, skip: tuple[int, ...] = ()) -> Path:
    """Shards ``base-0000i-of-0000n.gguf`` (1-based, leaving out ``skip``); returns the first."""
    for index in range(1, count + 1):
        if index not in skip:
            shard = directory / f"{base}-{index:05d}-of-{count:05d}.gguf"
            write_gguf(shard, split=(index - 1, count))
    return directory / f"{base}-00001-of-{count:05d}.gguf"


def write_truncated(source: Path, target: Path, length: int) -> Path:
    target.write_bytes(source.read_bytes()[:length])
    return target


def write_bad_magic(path: Path, magic: bytes = b"PK\x03\x04") -> Path:
    path.write_bytes(magic + b"\x00" * 60)
    return path


def write_patched(source: Path, target: Path, offset: int, data: bytes) -> Path:
    raw = bytearray(source.read_bytes())
    raw[offset : offset + len(data)] = data
    target.write_bytes(bytes(raw))
    return target


def write_with_version(source: Path, target: Path, version: int) -> Path:
    return write_patched(source, target, 4, struct.pack("<I", version))


def write_with_counts(source: Path, target: Path, tensors: int, kvs: int) -> Path:
    return write_patched(source, target, 8, struct.pack("<QQ", tensors, kvs))


def write_unknown_value_type(source: Path, target: Path, value_type: int = 99) -> Path:
    return write_patched(source, target, FIRST_VALUE_TYPE_OFFSET, struct.pack("<I", value_type))


def write_huge_string_length(source: Path, target: Path) -> Path:
    """The first key's length says 2**63 bytes."""
    return write_patched(source, target, 24, struct.pack("<Q", 2**63))
