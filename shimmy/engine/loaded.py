"""A model in memory: weights, a context with its slots, and the scheduler driving them."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from shimmy.engine import compute, library, rpc
from shimmy.engine.profile import EngineProfile
from shimmy.engine.prompt_cache import PromptCache
from shimmy.engine.scheduler import Generation, Sampling, Scheduler
from shimmy.engine.support import check_architecture
from shimmy.errors import invalid_request
from shimmy.models.chat_template import ChatTemplate, template_for
from shimmy.models.gguf import GGUFInfo

# control tokens whose presence tells a model family apart when the GGUF has no template
_TEMPLATE_MARKERS = ("<|eot_id|>", "<|start_header_id|>", "<|im_start|>", "<start_of_turn>",
                     "[INST]", "<|user|>", "<|end|>")

log = logging.getLogger("shimmy.engine")
FAIL_DECODE_ENV = "SHIMMY_TEST_FAIL_DECODE"


# the KV cache element types a context can hold, and their bytes per value
KV_CACHE_TYPES = {"f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32}
MAX_DRAFT = 3  # tokens guessed ahead per step, at most (--draft; the engine's own cap)
# ggml types whose matrix products llama.cpp's CPU backend computes with one kernel for a
# single row and another (llamafile's tinyBLAS) for several: F32, F16 and BF16. Its
# quantized kernels sum in the same order either way.
ROW_SHAPED_TYPES = frozenset({0, 1, 30})


@dataclass(frozen=True, slots=True)
class EngineSettings:
    ctx: int = 8192
    parallel: int = 4
    threads: int = 2
    gpu_layers: int = 0
    batch: int = 64  # prompt chunk; where rows do not round alike, the unit of reuse
    ubatch: int = 64  # prompt rows per pass over the weights at most (batch, if larger)
    use_mmap: bool = True
    kv_type: str = "f16"  # deterministic: bf16 and q8_0 decode with flash attention
    # flash attention over an f16 cache (as llama-server's default); the fast profile only
    flash_f16: bool = True
    draft: int = 3  # tokens guessed ahead per step (deterministic: bf16 and q8_0 only)
    # the invariant profile: a seed's text does not depend on other requests (slower)
    deterministic: bool = False
    prompt_cache: int = 0  # bytes of replaced slots' cells kept in memory (see PromptCache)
    max_tokens: int = 0  # the most tokens one answer may generate; 0: no cap
    rpc: tuple[str, ...] = ()  # RPC workers (HOST:PORT) the layers are split over
    tensor_split: tuple[float, ...] = ()  # shares of the offloaded layers per RPC device


ENCODER_ARCHITECTURES = frozenset({"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2",
                                   "jina-bert-v3", "modern-bert", "neo-bert", "t5encoder"})


def is_embedding_model(info: GGUFInfo | None) -> bool:
    """Encoders, and models whose GGUF names a pooling, produce embeddings, not text."""
    if info is None:
        return False
    pooling = info.metadata.get(f"{info.architecture}.pooling_type")
    return info.architecture in ENCODER_ARCHITECTURES or bool(pooling)


def exact_weights(info: GGUFInfo | None, loras: list[Path] | None) -> bool:
    """Whether the weights give a token's row the same result however many rows of its
    sequence are computed together: no matrix, LoRA's included, of a row-shaped type.
    Only then does ``BatchEngine`` guess ahead."""
    return info is not None and not loras and not info.matrix_types & ROW_SHAPED_TYPES


def _inject_faults(engine: object) -> None:
    """``SHIMMY_TEST_FAIL_DECODE=N[:M[:K]]``: the engine's N-th decode pass after load
    fails, then every M-th, K times in all (tests of what a llama.cpp failure does to
    served requests)."""
    spec = os.environ.get(FAIL_DECODE_ENV)
    if not spec:
        return
    numbers = [int(part) for part in spec.split(":")]
    after, every = numbers[0], numbers[1] if len(numbers) > 1 else 0
    count = numbers[2] if len(numbers) > 2 else (1_000_000 if every else 1)
    engine.inject_decode_failures(after, every, count)
    log.warning("%s=%s: decode passes will fail on purpose", FAIL_DECODE_ENV, spec)


class LoadProgress:
    """How far a model's load has come, readable from any thread while it runs.

    ``fraction`` is the share of the weights llama.cpp has read (its progress callback);
    it stays at 1.0 while the context is set up and warmed up. Made before the engine
    is loaded, so the pool can show it from the moment a load is asked for."""

    def __init__(self) -> None:
        self._tracker: Any = None  # the engine's LoadTracker, once the load began

    def start(self, engine_module: ModuleType) -> Any:
        self._tracker = engine_module.LoadTracker()
        return self._tracker

    @property
    def fraction(self) -> float:
        tracker = self._tracker
        return tracker.fraction if tracker is not None else 0.0


class LoadedModel:
    """Loads a GGUF through the C API; serves generations from its slots, or embeddings."""

    def __init__(self, name: str, path: Path, settings: EngineSettings,
                 loras: list[Path] | None = None, info: GGUFInfo | None = None,
                 progress: LoadProgress | None = None) -> None:
        engine_module = library.load()
        started = time.perf_counter()
        if info is not None:
            check_architecture(info.architecture)
        tracker = (progress or LoadProgress()).start(engine_module)
        self.name = name
        self.path = path
        self.max_tokens = settings.max_tokens
        self.n_preparing = 0  # requests rendering their prompts: in use, though not queued
        self.info = info
        self.embeddings_only = is_embedding_model(info)
        self.rpc = settings.rpc
        self.engine = self.scheduler = self.embedder = None
        self.profile: EngineProfile | None = None
        engine_module.take_placement_log()
        with rpc.loading(settings.rpc) as devices:
            self._load(engine_module, settings, devices, loras, tracker)
        # what llama.cpp's progress callback delivered, in order, ending at 1.0
        self.load_fractions: list[float] = tracker.fractions
        self.placement = rpc.placement(engine_module.take_placement_log())
        if self.engine is not None:
            self.profile = EngineProfile.measured(self.engine)
            _inject_faults(self.engine)
            cells = PromptCache(settings.prompt_cache) \
                if settings.prompt_cache > 0 and self.engine.caches_cells else None
            self.scheduler = Scheduler(self.engine, name, cells, self.engine.copies_cells)
        self._chat_template: ChatTemplate | None = None
        self.load_seconds = time.perf_counter() - started
        log.info("loaded %s (%s) in %.2f s: ctx %d, %d slots, %d threads%s", name,
                 self.model.description, self.load_seconds, self.n_ctx,
                 settings.parallel, settings.threads,
                 f"; {self.profile.words()}, {self.profile.output_head}'s output head"
                 if self.profile else "")
        if self.engine is not None and self.engine.cache_released:
            log.info("%s: %.0f MiB of KV cache reserved, resident as its cells fill", name,
                     self.engine.cache_released / 2**20)

    def _load(self, engine_module: ModuleType, settings: EngineSettings,
              rpc_devices: list[int], loras: list[Path] | None, tracker: Any) -> None:
        """Weights, then a context (and its warm-up) or an embedder."""
        self.model = engine_module.Model(str(self.path), settings.gpu_layers,
                                         settings.use_mmap, [str(p) for p in loras or ()],
                                         None, rpc_devices, list(settings.tensor_split),
                                         tracker)
        n_ctx = min(settings.ctx, self.model.n_ctx_train) if self.model.n_ctx_train > 0 \
            else settings.ctx
        if self.embeddings_only:
            self.embedder = engine_module.Embedder(self.model, n_ctx, settings.threads)
            return
        # shimmy's output head reads the layer's input in host memory: not over RPC
        own_head = library.output_head_wanted() and not rpc_devices
        self.engine = engine_module.BatchEngine(
            self.model, n_ctx, settings.parallel, settings.threads,
            min(settings.batch, n_ctx), settings.kv_type, settings.draft,
            exact_weights(self.info, loras), own_head, settings.deterministic,
            min(settings.ubatch, n_ctx), settings.flash_f16 and not settings.deterministic)
        compute.run(self.engine.warm_up)

    @property
    def chat_template(self) -> ChatTemplate:
        """The GGUF's own chat template, or the built-in that fits the model."""
        if self._chat_template is None:
            info = self.info
            markers = [text for text in _TEMPLATE_MARKERS if self._is_single_token(text)]
            self._chat_template = template_for(
                self.model.chat_template, info.architecture if info else None,
                (info.name if info else None) or self.name, markers)
        return self._chat_template

    def _is_single_token(self, text: str) -> bool:
        return len(self.model.tokenize(text, False, True)) == 1

    def embed(self, tokens: list[int]) -> list[float]:
        """One L2-normalised vector for a token sequence (blocking: run it off the loop)."""
        if self.embedder is None:
            raise invalid_request(
                f"Model '{self.name}' generates text; it does not produce embeddings",
                "The model does not support embeddings", "model")
        if len(tokens) > self.embedder.n_ctx:
            raise invalid_request(
                f"The input has {len(tokens)} tokens; the model's context is "
                f"{self.embedder.n_ctx} tokens", "Input exceeds the context length", "input")
        return compute.run(self.embedder.embed, tokens)

    @property
    def n_ctx(self) -> int:
        return self.embedder.n_ctx if self.engine is None else self.engine.n_ctx

    def tokenize(self, text: str, special: bool = False) -> list[int]:
        """Text to tokens with the model's start token; ``special`` parses control tokens
        written as text (a rendered chat template), and then adds the start token only
        when the text does not already begin with it."""
        if not special:
            return self.model.tokenize(text, True, False)
        tokens = self.model.tokenize(text, False, True)
        bos = self.model.bos_token
        if self.model.adds_bos and bos >= 0 and (not tokens or tokens[0] != bos):
            tokens.insert(0, bos)
        return tokens

    @contextlib.contextmanager
    def preparing(self) -> Iterator[None]:
        """Count a request as using the model while its prompt is made off the event
        loop, before it is queued: the pool does not unload a model in use."""
        self.n_preparing += 1
        try:
            yield
        finally:
            self.n_preparing -= 1

    def generate(self, prompt: str | list[int], max_tokens: int, sampling: Sampling,
                 stop: list[str] | None = None, ignore_eos: bool = False,
                 logprobs: int = -1, reuse_cache: bool = True,
                 special: bool = False) -> Generation:
        """Queue a generation; must be called on the event loop that will consume it."""
        generation = self.prepare(prompt, max_tokens, sampling, stop, ignore_eos, logprobs,
                                  reuse_cache, special)
        self.scheduler.submit(generation)
        return generation

    def prepare(self, prompt: str | list[int], max_tokens: int, sampling: Sampling,
                stop: list[str] | None = None, ignore_eos: bool = False,
                logprobs: int = -1, reuse_cache: bool = True,
                special: bool = False) -> Generation:
        """A generation checked against the model and ready for ``submit``; raises the
        request's error. On the event loop that will consume it; a long text prompt is
        better tokenized off the loop first (``asyncio.to_thread(self.tokenize, ...)``)."""
        if self.scheduler is None:
            raise invalid_request(f"Model '{self.name}' produces embeddings; it does not "
                                  "generate text", "The model does not generate text", "model")
        tokens = self.tokenize(prompt) if isinstance(prompt, str) else prompt
        if self.max_tokens:
            max_tokens = min(max_tokens, self.max_tokens)
        n_vocab = self.model.n_vocab
        if any(not 0 <= token < n_vocab for token in sampling.logit_bias):
            raise invalid_request(f"'logit_bias' names a token id outside 0-{n_vocab - 1}",
                                  param="logit_bias")
        if not tokens:
            raise invalid_request("The prompt is empty and the model adds no start token")
        need = len(tokens) + max_tokens
        if need > self.n_ctx:
            raise invalid_request(
                f"The prompt has {len(tokens)} tokens and max_tokens is {max_tokens}: "
                f"{need} tokens exceed the model's context of {self.n_ctx} tokens",
                "Prompt and max_tokens exceed the context length",
            )
        return Generation(tokens, max_tokens, sampling, [s for s in stop or () if s],
                          ignore_eos, logprobs, reuse_cache, special)

    def submit(self, *generations: Generation) -> None:
        """Queue prepared generations, all together (a multi-prompt request) or none."""
        if self.scheduler is None:
            raise invalid_request(f"Model '{self.name}' produces embeddings; it does not "
                                  "generate text", "The model does not generate text", "model")
        self.scheduler.submit(*generations)

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
        self.engine = self.embedder = self.model = None
        if self.rpc:
            # the workers' connection lives as long as the weights and the context: free
            # them now, so that the next load finds the workers free (a worker serves one
            # connection at a time)
            if self.scheduler is not None:
                self.scheduler.engine = None
            gc.collect()
            rpc.release(self.rpc)
            self.rpc = ()
