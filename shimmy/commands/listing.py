"""``shimmy list`` and ``shimmy discover``."""

from __future__ import annotations

import sys
from typing import Any

from shimmy.commands.advice import no_models_text, searched_lines
from shimmy.commands.term import paint, print_json
from shimmy.config import Config
from shimmy.models.discovery import DiscoveryReport
from shimmy.sysinfo import format_bytes


def list_models(config: Config, as_json: bool = False) -> int:
    report = config.discover()
    if as_json:
        print_json({"default": _default_name(report), "models": _model_dicts(report)})
    if not report.models:
        print(no_models_text(report), file=sys.stderr if as_json else sys.stdout)
        return 1
    if not as_json:
        _print_table(_model_rows(report))
    return 0


def show_discovery(config: Config, as_json: bool = False) -> int:
    report = config.discover()
    if as_json:
        print_json({"default": _default_name(report), **report.describe()})
    else:
        print_report(report)
    return 0 if report.models else 1


def print_report(report: DiscoveryReport) -> None:
    print("Searched:")
    for line in searched_lines(report):
        print(paint(line, "dim") if line.endswith("(not present)") else line)
    print(f"Found {len(report.models)} model(s):")
    for entry in report.models:
        loras = f" + {len(entry.loras)} LoRA" if entry.loras else ""
        shards = f" ({len(entry.shards)} shards)" if len(entry.shards) > 1 else ""
        print(f"  {entry.name:<30} {entry.path}{shards}{loras}  [{entry.source}]")
    if report.skipped:
        print(f"Skipped {len(report.skipped)}:")
        for skip in report.skipped:
            print(f"  {skip.path}: {paint(skip.reason, 'yellow')}")
    if not report.models:
        print(no_models_text(report).splitlines()[-1])


def _default_name(report: DiscoveryReport) -> str | None:
    return report.default.name if report.default else None


def _model_dicts(report: DiscoveryReport) -> list[dict[str, Any]]:
    return [{**entry.describe(), "default": entry is report.default} for entry in report.models]


def _model_rows(report: DiscoveryReport) -> list[tuple[str, ...]]:
    rows = [("NAME", "ARCH", "PARAMS", "QUANT", "CONTEXT", "SIZE", "SOURCE")]
    for entry in report.models:
        meta = entry.info.describe()
        rows.append((
            entry.name + (" (default)" if entry is report.default else ""),
            meta["architecture"] or "?",
            meta["parameters_human"],
            meta["quantization"] or "?",
            str(meta["context_length"] or "?"),
            format_bytes(entry.size),
            entry.source,
        ))
    return rows


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        line = "  ".join(cells).rstrip()
        print(paint(line, "bold") if index == 0 else line)
