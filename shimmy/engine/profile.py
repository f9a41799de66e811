"""How a loaded engine computes: one object, decided once when the model loads.

Batch invariance (a seed's text does not depend on the requests beside it) rests on
three things: llama.cpp's tiled K-quant kernel turned off (``library.load``), weights and
KV cache types whose kernels give a row the same numbers in any batch (``exact_weights``
and ``BatchEngine``'s attention choice), and the check ``BatchEngine.warm_up`` runs on
this machine. Their outcome is this profile; everything else reads it. ``shimmy probe``,
``shimmy diag --json`` and ``/metrics`` report it.

Today there is one policy, ``invariant``. A faster one that gives up invariance is
meant to sit beside it as another ``name`` with its own decisions, chosen by a flag.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

INVARIANT = "invariant"  # a seed's text does not depend on other requests


@dataclass(frozen=True, slots=True)
class EngineProfile:
    name: str
    # a row's logits do not depend on the other rows of its step (measured at warm-up):
    # every busy slot shares one pass, a lone request guesses ahead, any cached prefix
    # is reused to the token, cells are copied between slots and the prompt cache
    exact_rows: bool
    rows_per_pass: int  # generating slots per llama_decode at most
    draft: int  # tokens a lone request guesses ahead per step; 0: none
    reuse_unit: int  # a reused prefix is cut to a multiple of this many tokens
    output_head: str  # "shimmy" or "llama.cpp": who computes the logits
    checked: dict[str, Any]  # what warm-up compared, and what the caller vouched for

    @classmethod
    def measured(cls, engine: Any) -> EngineProfile:
        """The profile of a ``BatchEngine`` after its ``warm_up``."""
        facts = engine.profile_facts()
        single, multi, differing = facts["head_checks"]
        return cls(
            name=INVARIANT, exact_rows=facts["exact_rows"],
            rows_per_pass=facts["rows_per_pass"], draft=facts["draft"],
            reuse_unit=facts["reuse_unit"],
            output_head="shimmy" if facts["own_head"] else "llama.cpp",
            checked={"rows_in_one_step": facts["rows_checked"],
                     "kv_type": facts["kv_type"],
                     "weights_without_row_shaped_matrices": facts["exact_weights"],
                     "output_head_rows": {"one_row": single, "several_rows": multi,
                                          "differing": differing}})

    def describe(self) -> dict[str, Any]:
        return asdict(self)

    def words(self) -> str:
        """One line for people: what the profile does, and why."""
        if self.exact_rows:
            how = (f"exact rows ({self.checked['rows_in_one_step']} rows checked): slots "
                   f"share a pass, reuse to the token, up to {self.draft} tokens guessed ahead")
        else:
            how = (f"rows not exact here: {self.rows_per_pass} slots per pass, prefixes reused "
                   f"in units of {self.reuse_unit}, no guessing ahead")
        return f"{self.name}: {how}"
