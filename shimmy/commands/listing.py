"""``shimmy list`` and ``shimmy discover``."""

from __future__ import annotations

from shimmy.config import Config
from shimmy.models.discovery import DiscoveryReport
from shimmy.sysinfo import format_bytes


def list_models(config: Config) -> int:
    report = config.discover()
    if not report.models:
        print("No models found. Run 'shimmy discover' to see where shimmy looked.")
        return 1
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
    _print_table(rows)
    return 0


def show_discovery(config: Config) -> int:
    report = config.discover()
    print_report(report)
    return 0 if report.models else 1


def print_report(report: DiscoveryReport) -> None:
    print("Searched:")
    for place in report.searched:
        state = "" if place.exists else "  (not present)"
        print(f"  {place.source:<12} {place.path}{state}")
    print(f"Found {len(report.models)} model(s):")
    for entry in report.models:
        loras = f" + {len(entry.loras)} LoRA" if entry.loras else ""
        shards = f" ({len(entry.shards)} shards)" if len(entry.shards) > 1 else ""
        print(f"  {entry.name:<30} {entry.path}{shards}{loras}  [{entry.source}]")
    if report.skipped:
        print(f"Skipped {len(report.skipped)}:")
        for skip in report.skipped:
            print(f"  {skip.path}: {skip.reason}")


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
