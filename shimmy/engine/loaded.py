"""A model in memory: weights, a context with its slots, and the scheduler driving them."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from shimmy.engine import native
from shimmy.engine.scheduler import Generation, Sampling, Scheduler
from shimmy.errors import invalid_request

log = logging.getLogger("shimmy.engine")


@dataclass(frozen=True, slots=True)
class EngineSettings:
    ctx: int = 8192
    parallel: int = 4
    threads: int = 2
    gpu_layers: int = 0
    batch: int = 256  # prompt chunk; also the unit in which cached prefixes are reused
    use_mmap: bool = True


class LoadedModel:
    """Loads a GGUF through the C API and serves generations from its slots."""

    def __init__(self, name: str, path: Path, settings: EngineSettings,
                 loras: list[Path] | None = None) -> None:
        sampler = native.load()
        started = time.perf_counter()
        self.name = name
        self.path = path
        self.model = sampler.Model(str(path), settings.gpu_layers, settings.use_mmap,
                                   [str(p) for p in loras or ()])
        n_ctx = min(settings.ctx, self.model.n_ctx_train) if self.model.n_ctx_train > 0 \
            else settings.ctx
        self.engine = sampler.BatchEngine(self.model, n_ctx, settings.parallel, settings.threads,
                                          min(settings.batch, n_ctx))
        self.engine.warm_up()
        self.load_seconds = time.perf_counter() - started
        self.scheduler = Scheduler(self.engine, name)
        log.info("loaded %s (%s) in %.2f s: ctx %d, %d slots, %d threads", name,
                 self.model.description, self.load_seconds, self.engine.n_ctx,
                 settings.parallel, settings.threads)

    @property
    def n_ctx(self) -> int:
        return self.engine.n_ctx

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

    def generate(self, prompt: str | list[int], max_tokens: int, sampling: Sampling,
                 stop: list[str] | None = None, ignore_eos: bool = False,
                 logprobs: int = -1) -> Generation:
        """Queue a generation; must be called on the event loop that will consume it."""
        tokens = self.tokenize(prompt) if isinstance(prompt, str) else prompt
        if not tokens:
            raise invalid_request("The prompt is empty and the model adds no start token")
        need = len(tokens) + max_tokens
        if need > self.n_ctx:
            raise invalid_request(
                f"The prompt has {len(tokens)} tokens and max_tokens is {max_tokens}: "
                f"{need} tokens exceed the model's context of {self.n_ctx} tokens",
                "Prompt and max_tokens exceed the context length",
            )
        generation = Generation(tokens, max_tokens, sampling, [s for s in stop or () if s],
                                ignore_eos, logprobs)
        self.scheduler.submit(generation)
        return generation

    def close(self) -> None:
        self.scheduler.stop()
        self.engine = None
        self.model = None
