"""How a loaded engine computes: one object, decided once when the model loads.

Batch invariance (a seed's text does not depend on the requests beside it) rests on
three things: llama.cpp's tiled K-quant kernel turned off (``library.load``), weights and
KV cache types whose kernels give a row the same numbers in any batch (``exact_weights``
and ``BatchEngine``'s attention choice), and the check ``BatchEngine.warm_up`` runs on
this machine. Their outcome is this profile; everything else reads it. ``shimmy probe``,
``shimmy diag --json`` and ``/metrics`` report it.

Two policies: ``fast``, the default, packs every busy slot's rows into one pass and
reuses cached prefixes as a cold start would read them, with llama.cpp's fastest kernels
and sliding-window layers cached at their window (as llama-server does; a request alone
gives the same text each time, except after reusing a prefix whose window cache has
wrapped or had to be reused to the token; beside others it may differ in the last bits
of its numbers); ``invariant`` (``--deterministic``) gives that up where the
check fails, for a seed's text that does not depend on other requests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

INVARIANT = "invariant"  # a seed's text does not depend on other requests
FAST = "fast"  # llama.cpp's fastest kernels, steps packed; no invariance promised


@dataclass(frozen=True, slots=True)
class EngineProfile:
    name: str
    # a row's logits do not depend on the other rows of its step (measured at warm-up):
    # every busy slot shares one pass, a lone request guesses ahead, any cached prefix
    # is reused to the token, cells are copied between slots and the prompt cache
    exact_rows: bool
    # every busy slot's rows share one pass and a lone request guesses ahead: with
    # exact rows, or in ``fast``. Reuse to the token and cell copies need exact rows
    # in both: a prefix's cells are otherwise reused only as a cold start would read them
    packed: bool
    rows_per_pass: int  # generating slots per llama_decode at most
    draft: int  # tokens a lone request guesses ahead per step; 0: none
    reuse_unit: int  # a reused prefix is cut to a multiple of this many tokens
    prompt_rows: int  # prompt tokens one pass over the weights reads at most
    attention: str  # "flash" (llama.cpp's flash attention) or "plain"
    output_head: str  # "shimmy" or "llama.cpp": who computes the logits
    # sliding-window layers cached at their "window" (fast) or "full" (invariant); None
    # for a model without them
    swa_cache: str | None
    checked: dict[str, Any]  # what warm-up compared, and what the caller vouched for

    @classmethod
    def measured(cls, engine: Any) -> EngineProfile:
        """The profile of a ``BatchEngine`` after its ``warm_up``."""
        facts = engine.profile_facts()
        single, multi, differing = facts["head_checks"]
        return cls(
            name=INVARIANT if facts["invariant"] else FAST, exact_rows=facts["exact_rows"],
            packed=facts["packed"],
            rows_per_pass=facts["rows_per_pass"], draft=facts["draft"],
            reuse_unit=facts["reuse_unit"], prompt_rows=facts["prompt_rows"],
            attention=facts["attention"],
            output_head="shimmy" if facts["own_head"] else "llama.cpp",
            swa_cache=facts["swa_cache"],
            checked={"invariant": facts["invariant"],
                     "rows_in_one_step": facts["rows_checked"],
                     "kv_type": facts["kv_type"],
                     "weights_without_row_shaped_matrices": facts["exact_weights"],
                     "output_head_rows": {"one_row": single, "several_rows": multi,
                                          "differing": differing}})

    def describe(self) -> dict[str, Any]:
        return asdict(self)

    def words(self) -> str:
        """One line for people: what the profile does, and why."""
        if not self.checked.get("invariant", True):
            reuse = "to the token" if self.exact_rows else \
                f"in units of {self.reuse_unit}, to the token past an answer"
            how = (f"llama.cpp's fastest kernels, {self.attention} attention over "
                   f"{self.checked['kv_type']}, {self.rows_per_pass} slots per pass, reuse "
                   f"{reuse}, up to {self.draft} tokens guessed ahead; other requests in a "
                   "batch may change a seed's text")
        elif self.exact_rows:
            how = (f"exact rows ({self.checked['rows_in_one_step']} rows checked): slots "
                   f"share a pass, reuse to the token, up to {self.draft} tokens guessed ahead")
        else:
            how = (f"rows not exact here: {self.rows_per_pass} slots per pass, prefixes reused "
                   f"in units of {self.reuse_unit}, no guessing ahead")
        return f"{self.name}: {how}"
