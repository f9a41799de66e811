"""Facts about this machine and process that diag, health and probe report."""

from __future__ import annotations

import os
from pathlib import Path


def process_rss_bytes() -> int:
    """Resident memory of this process, from the kernel's own accounting."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def total_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def available_memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def physical_cores() -> int:
    """Physical cores we may run on: llama.cpp is fastest with one thread per core."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        cores = set()
        physical = core = None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "physical id":
                physical = value.strip()
            elif key == "core id":
                core = value.strip()
            elif not line.strip() and core is not None:
                cores.add((physical, core))
                physical = core = None
        if core is not None:
            cores.add((physical, core))
        if cores:
            return max(1, min(len(cores), usable or 1))
    except OSError:
        pass
    return max(1, usable or 1)


def format_bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n}B"
