"""``shimmy diag``: what a bug report needs, in one screen."""

from __future__ import annotations

import os
import platform
import socket
import sys

from shimmy.cli import version_line
from shimmy.commands.listing import print_report
from shimmy.config import Config
from shimmy.engine import native
from shimmy.sysinfo import available_memory_bytes, format_bytes, physical_cores, total_memory_bytes


def diag(config: Config) -> int:
    print(version_line())
    print(f"python:       {sys.version.split()[0]} ({sys.executable})")
    print(f"platform:     {platform.platform()}")
    print(f"cpu:          {_cpu_model()}")
    print(f"cores:        {physical_cores()} physical, {os.cpu_count()} logical; "
          f"threads to use: {config.n_threads}")
    print(f"memory:       {format_bytes(total_memory_bytes())} total, "
          f"{format_bytes(available_memory_bytes())} available")
    try:
        llama = native.load()
    except Exception as exc:  # a broken install must still get a report
        print(f"llama.cpp:    NOT LOADABLE: {exc}")
    else:
        print(f"llama.cpp:    {llama.system_info()}")
        offload = "supported" if llama.supports_gpu_offload() else "not supported (CPU build)"
        print(f"gpu offload:  {offload}; --gpu-layers {config.gpu_layers}")
    print(f"port:         {config.host}:{config.port} {_port_state(config.host, config.port)}")
    print_report(config.discover())
    return 0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _port_state(host: str, port: int) -> str:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # as serve's listener does: a port left in TIME_WAIT is free for it
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return f"is NOT free ({exc.strerror})"
    return "is free"
