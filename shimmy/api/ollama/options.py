"""Ollama's ``options`` object: Modelfile parameters, to shimmy's sampling and limits.

Types are checked as Ollama checks them (``api.Options.FromMap``): an integer option
takes any JSON number (a fraction is cut off, as Go converts it), a float option any
number, a boolean one only true or false, ``stop`` only an array of strings; a wrong
type is a 400 naming the option, and unknown options are ignored. Values are then held
to what the engine can do (a temperature below 0 is greedy, top_p above 1 is 1, ...)
rather than refused, since Ollama refuses none.

Options that pick how a model is loaded (``num_gpu``, ``num_thread``, ``use_mmap``, ...)
are checked and ignored: shimmy loads each model once, as ``shimmy serve`` was told.
``num_ctx`` can only lower the context a request may fill (a slot holds ``--ctx``
tokens); ``num_keep`` has nothing to keep (shimmy never shifts the context);
``typical_p``, ``tfs_z`` and mirostat are not in shimmy's sampler chain.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from typing import Any

from shimmy.api.ollama.common import bad_request
from shimmy.api.params import MAX_STOP_STRINGS
from shimmy.engine.scheduler import Sampling

INTEGER_OPTIONS = frozenset({"num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread",
                             "num_keep", "seed", "num_predict", "top_k", "repeat_last_n",
                             "mirostat", "draft_num_predict"})
FLOAT_OPTIONS = frozenset({"top_p", "min_p", "tfs_z", "typical_p", "temperature",
                           "repeat_penalty", "presence_penalty", "frequency_penalty",
                           "mirostat_tau", "mirostat_eta"})
BOOLEAN_OPTIONS = frozenset({"numa", "low_vram", "f16_kv", "logits_all", "vocab_only",
                             "use_mmap", "use_mlock", "penalize_newline", "embedding_only"})
# Ollama's defaults (api.DefaultOptions) where they differ from no-op values
DEFAULTS: dict[str, Any] = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.0,
                            "repeat_penalty": 1.0, "repeat_last_n": 64, "seed": -1,
                            "presence_penalty": 0.0, "frequency_penalty": 0.0,
                            "num_predict": -1}
MAX_SEED = 2**32 - 2


@dataclass(slots=True)
class Options:
    sampling: Sampling
    num_predict: int | None = None  # None: until the end of the context (-1 and -2)
    num_ctx: int | None = None  # None: the slot's whole context
    stop: list[str] = field(default_factory=list)

    def budget(self, n_ctx: int, n_prompt: int) -> int:
        """Tokens this request may generate; at least 1, else ``context_full``."""
        context = min(n_ctx, self.num_ctx) if self.num_ctx else n_ctx
        room = context - n_prompt
        if room < 1:
            raise bad_request(f"the prompt has {n_prompt} tokens, which fill the context "
                              f"of {context} tokens (num_ctx, or the slot's --ctx)")
        return room if self.num_predict is None else min(self.num_predict, room)


def parse_options(value: Any) -> Options:
    """The request's ``options`` (absent or null: Ollama's defaults)."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise bad_request("options must be an object")
    values = {**DEFAULTS}
    for key, item in value.items():
        if item is not None and (checked := _checked(key, item)) is not None:
            values[key] = checked
    predict = int(values["num_predict"])
    num_ctx = values.get("num_ctx")
    return Options(
        sampling=_sampling(values),
        num_predict=predict if predict > 0 else None,
        num_ctx=int(num_ctx) if num_ctx is not None and num_ctx > 0 else None,
        stop=_stops(values.get("stop", [])),
    )


def _checked(key: str, value: Any) -> Any:
    """``value`` if it has the option's type (integers cut as Go cuts them)."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if key in INTEGER_OPTIONS:
        if not number or not math.isfinite(value):
            raise bad_request(f'option "{key}" must be of type integer')
        return int(value)
    if key in FLOAT_OPTIONS:
        if not number or not math.isfinite(value):
            raise bad_request(f'option "{key}" must be of type float32')
        return float(value)
    if key in BOOLEAN_OPTIONS:
        if not isinstance(value, bool):
            raise bad_request(f'option "{key}" must be of type boolean')
        return value
    if key == "stop":
        if not isinstance(value, list):
            raise bad_request('option "stop" must be of type array')
        if not all(isinstance(item, str) for item in value):
            raise bad_request('option "stop" must be of an array of strings')
        return value
    return None  # unknown: ignored, as Ollama ignores it


def _stops(stops: list[str]) -> list[str]:
    stops = [stop for stop in stops if stop]
    if len(stops) > MAX_STOP_STRINGS:
        raise bad_request(f'option "stop" has {len(stops)} strings; shimmy takes at most '
                          f"{MAX_STOP_STRINGS}")
    return stops


def _sampling(values: dict[str, Any]) -> Sampling:
    seed = int(values["seed"])
    return Sampling(
        temperature=_clamp(values["temperature"], 0.0, 100.0),
        top_k=int(_clamp(values["top_k"], 0, 1_000_000)),
        top_p=_clamp(values["top_p"], 0.0, 1.0),
        min_p=_clamp(values["min_p"], 0.0, 1.0),
        repeat_penalty=_clamp(values["repeat_penalty"], 0.0, 10.0),
        frequency_penalty=_clamp(values["frequency_penalty"], -2.0, 2.0),
        presence_penalty=_clamp(values["presence_penalty"], -2.0, 2.0),
        # -1 is Ollama's "the whole context"; the engine reads the last 1e6 at most
        penalty_last_n=1_000_000 if values["repeat_last_n"] < 0
        else int(_clamp(values["repeat_last_n"], 0, 1_000_000)),
        seed=secrets.randbits(31) if seed < 0 else seed % (MAX_SEED + 1),
    )


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)
