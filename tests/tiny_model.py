"""A tiny GGUF that llama.cpp really loads and runs, and that greedily spells a fixed text.

``write_spelling_model(path, text)`` writes a one-layer "llama" model whose vocabulary is
``<unk>``, ``<s>``, ``</s>`` and the 256 byte tokens ``<0x00>``..``<0xFF>`` (SPM with
byte fallback, so every non-ASCII character is split over several tokens). The model is a
state machine keyed on the *current* token only:

* the token embedding is one-hot (``n_embd`` > ``n_vocab``, the spare dimensions stay 0);
* attention and feed-forward weights are all zero, so the residual stream carries the
  embedding through unchanged, and the RMSNorm weights are ones;
* ``output.weight`` is a 0/1 matrix that maps each token to the token that must follow it.

After the final RMSNorm the one-hot vector has height ``sqrt(n_embd)`` (about 17.9), so the
successor's logit is about 17.9 and every other logit is exactly 0: argmax is never close,
and the RMSNorm epsilon does not matter.

Successors: byte ``text[i]`` -> byte ``text[i + 1]``; the last byte -> ``</s>`` (with
``eos_after``) or back to the first byte; every other token (``<s>``, ``<unk>``, ``</s>``
and the bytes that do not occur in ``text``) -> the first byte of ``text``.

Precondition (checked, ``ValueError`` otherwise): every byte value of ``text`` has one
successor. With ``eos_after`` that means no byte occurs twice (so watch spaces, repeated
letters and shared UTF-8 lead/continuation bytes: "é" and "ö" both start with 0xC3); without
it, repeats are allowed when the text is consistent with being read in a cycle ("abab").
``spellable()`` tells whether a text qualifies.

Prompt: the first generated token is the successor of the *last prompt token*. A prompt
that is only ``<s>`` (tokenize "" with add_special) or whose last byte is not in ``text``
yields ``text`` from its start; otherwise see ``expected_output()``. The vocabulary has no
space prefix, so ``tokenize("ab")`` is ``[<s>, <0x61>, <0x62>]``, but SPM still writes a
space as "▁" (bytes E2 96 81), so a prompt ending in a space ends in byte 0x81.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFWriter, PoolingType, TokenType

UNK, BOS, EOS = 0, 1, 2
FIRST_BYTE_TOKEN = 3
N_VOCAB = FIRST_BYTE_TOKEN + 256  # 259
N_EMBD = 320  # > N_VOCAB, for one-hot embeddings; 5 heads of 64
N_HEAD = 5
N_FF = 32
N_LAYER = 1
CONTEXT_LENGTH = 512


def byte_token(byte: int) -> int:
    """The token id of one byte value."""
    return FIRST_BYTE_TOKEN + byte


def successors(text: str, *, eos_after: bool = True) -> dict[int, int]:
    """Byte value -> token id that follows it; ``ValueError`` if ``text`` is not spellable."""
    data = text.encode("utf-8")
    if not data:
        raise ValueError("text must not be empty")
    follow: dict[int, int] = {}
    for index, byte in enumerate(data):
        if index + 1 < len(data):
            nxt = byte_token(data[index + 1])
        else:
            nxt = EOS if eos_after else byte_token(data[0])
        if follow.setdefault(byte, nxt) != nxt:
            raise ValueError(f"byte 0x{byte:02X} of {text!r} has two different successors")
    return follow


def spellable(text: str, *, eos_after: bool = True) -> bool:
    try:
        successors(text, eos_after=eos_after)
    except ValueError:
        return False
    return True


def expected_output(
    text: str,
    last_prompt_byte: int | None = None,
    *,
    eos_after: bool = True,
    max_tokens: int | None = None,
) -> bytes:
    """The bytes greedy decoding yields after a prompt ending in ``last_prompt_byte``.

    ``None`` stands for a last prompt token that is not a byte of ``text`` (``<s>``, say).
    Generation stops at ``</s>`` or after ``max_tokens`` tokens (needed without
    ``eos_after``). The result may start inside a UTF-8 character.
    """
    follow = successors(text, eos_after=eos_after)
    if max_tokens is None and not eos_after:
        raise ValueError("without eos_after the output never ends: give max_tokens")
    last = -1 if last_prompt_byte is None else last_prompt_byte
    token = follow.get(last, byte_token(text.encode("utf-8")[0]))
    out = bytearray()
    while token != EOS and (max_tokens is None or len(out) < max_tokens):
        byte = token - FIRST_BYTE_TOKEN
        out.append(byte)
        token = follow[byte]
    return bytes(out)


def _vocabulary() -> tuple[list[str], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    return tokens, [int(t) for t in types]


def _output_matrix(follow: dict[int, int], first_token: int) -> np.ndarray:
    """numpy (n_vocab, n_embd): row = output token, column = current token."""
    out = np.zeros((N_VOCAB, N_EMBD), dtype=np.float32)
    for current in range(N_VOCAB):
        byte = current - FIRST_BYTE_TOKEN
        out[follow.get(byte, first_token), current] = 1.0
    return out


def _add_hparams(writer: GGUFWriter, context_length: int) -> None:
    writer.add_name("Tiny Speller")
    writer.add_context_length(context_length)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(N_VOCAB)
    writer.add_file_type(0)  # all F32


def _add_tokenizer(writer: GGUFWriter, chat_template: str | None) -> None:
    tokens, types = _vocabulary()
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * N_VOCAB)
    writer.add_token_types(types)
    writer.add_unk_token_id(UNK)
    writer.add_bos_token_id(BOS)
    writer.add_eos_token_id(EOS)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)


def _add_tensors(writer: GGUFWriter, output: np.ndarray) -> None:
    def zeros(*shape: int) -> np.ndarray:
        return np.zeros(shape, dtype=np.float32)

    ones = np.ones(N_EMBD, dtype=np.float32)
    writer.add_tensor("token_embd.weight", np.eye(N_VOCAB, N_EMBD, dtype=np.float32))
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", output)
    for layer in range(N_LAYER):
        blk = f"blk.{layer}"
        writer.add_tensor(f"{blk}.attn_norm.weight", ones)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"{blk}.{name}.weight", zeros(N_EMBD, N_EMBD))
        writer.add_tensor(f"{blk}.ffn_norm.weight", ones)
        writer.add_tensor(f"{blk}.ffn_gate.weight", zeros(N_FF, N_EMBD))
        writer.add_tensor(f"{blk}.ffn_up.weight", zeros(N_FF, N_EMBD))
        writer.add_tensor(f"{blk}.ffn_down.weight", zeros(N_EMBD, N_FF))


def write_spelling_model(
    path: Path,
    text: str,
    *,
    eos_after: bool = True,
    chat_template: str | None = None,
    split_max_tensors: int = 0,
    pooling_type: int | None = None,
    fim_tokens: tuple[int, int, int] | None = None,
    context_length: int = CONTEXT_LENGTH,
) -> Path:
    """Write a GGUF whose greedy output is the UTF-8 bytes of ``text``, then ``</s>``.

    With ``split_max_tensors`` the model is written as shards ``<stem>-0000i-of-0000n.gguf``
    of at most that many tensors each. Without ``eos_after`` it starts over at the first
    byte instead. See the module
    docstring for the precondition on ``text`` and the role of the last prompt token.
    """
    follow = successors(text, eos_after=eos_after)
    output = _output_matrix(follow, byte_token(text.encode("utf-8")[0]))
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(path, "llama", split_max_tensors=split_max_tensors)
    _add_hparams(writer, context_length)
    if pooling_type is not None:  # 1 = mean: llama.cpp then serves it as an embedding model
        writer.add_pooling_type(PoolingType(pooling_type))
    _add_tokenizer(writer, chat_template)
    if fim_tokens is not None:  # (prefix, suffix, middle) ids: the model then "infills"
        for key, token in zip(("pre", "suf", "mid"), fim_tokens, strict=True):
            writer.add_uint32(f"tokenizer.ggml.fim_{key}_token_id", token)
    _add_tensors(writer, output)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_redirect_lora(path: Path, after: int, goes_to: int, strength: float = 50.0) -> Path:
    """A rank-1 LoRA adapter for a spelling model: token ``after`` is followed by ``goes_to``.

    It adds ``strength`` to ``output.weight[goes_to, after]``, which outweighs the base
    model's successor by far, so applying it visibly changes the greedy output.
    """
    lora_a = np.zeros((1, N_EMBD), dtype=np.float32)  # ggml ne [n_embd, rank]
    lora_a[0, after] = 1.0
    lora_b = np.zeros((N_VOCAB, 1), dtype=np.float32)  # ggml ne [rank, n_vocab]
    lora_b[goes_to, 0] = strength
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(path, "llama")
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", 1.0)
    writer.add_tensor("output.weight.lora_a", lora_a)
    writer.add_tensor("output.weight.lora_b", lora_b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
