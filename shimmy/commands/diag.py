"""``shimmy diag``: what a bug report needs, in one screen (or one JSON object)."""

from __future__ import annotations

import os
import platform
import socket
import sys
from importlib import metadata
from typing import Any

from shimmy import __version__
from shimmy.cli import version_line
from shimmy.commands.listing import print_report
from shimmy.commands.ports import port_holder
from shimmy.commands.term import paint, print_json
from shimmy.config import Config
from shimmy.engine import library, rpc
from shimmy.engine.profile import FAST, INVARIANT
from shimmy.sysinfo import available_memory_bytes, format_bytes, physical_cores, total_memory_bytes


def diag(config: Config, as_json: bool = False) -> int:
    report = config.discover()
    facts = collect(config)
    if as_json:
        print_json({**facts, "discovery": report.describe()})
        return 0
    _print_facts(facts)
    print_report(report)
    return 0


def collect(config: Config) -> dict[str, Any]:
    return {
        "shimmy": __version__,
        "llama_cpp_python": _package_version("llama-cpp-python"),
        "python": {"version": sys.version.split()[0], "executable": sys.executable},
        "platform": platform.platform(),
        "cpu": {"model": _cpu_model(), "physical_cores": physical_cores(),
                "logical_cores": os.cpu_count(), "threads": config.n_threads},
        "memory": {"total_bytes": total_memory_bytes(),
                   "available_bytes": available_memory_bytes()},
        "llama_cpp": _llama_facts(config.deterministic),
        "gpu_layers": config.gpu_layers,
        "rpc_devices": rpc.device_facts(config.rpc) if config.rpc else [],
        "port": _port_facts(config.host, config.port),
    }


def _print_facts(facts: dict[str, Any]) -> None:
    cpu, memory, llama, port = facts["cpu"], facts["memory"], facts["llama_cpp"], facts["port"]
    print(version_line())
    print(f"python:       {facts['python']['version']} ({facts['python']['executable']})")
    print(f"platform:     {facts['platform']}")
    print(f"cpu:          {cpu['model']}")
    print(f"cores:        {cpu['physical_cores']} physical, {cpu['logical_cores']} logical; "
          f"threads to use: {cpu['threads']}")
    print(f"memory:       {format_bytes(memory['total_bytes'])} total, "
          f"{format_bytes(memory['available_bytes'])} available")
    if llama["loadable"]:
        print(f"llama.cpp:    {llama['system_info']}")
        print(f"cpu variant:  {_variant_words(llama)}")
        print(f"output head:  {_head_words(llama['output_head'])}")
        print(f"gpu offload:  {_offload_words(llama['gpu_offload'], bool(facts['rpc_devices']))}"
              f"; --gpu-layers {facts['gpu_layers']}")
        print(f"rpc backend:  {_rpc_backend_words(llama['rpc_backend'])}")
        for device in facts["rpc_devices"]:
            print(f"rpc device:   {_rpc_words(device)}")
    else:
        print(f"llama.cpp:    {paint('NOT LOADABLE', 'red')}: {llama['error']}")
    print(f"port:         {port['host']}:{port['port']} {_port_words(port)}")


def _llama_facts(deterministic: bool) -> dict[str, Any]:
    try:
        llama = library.load()
    except Exception as exc:  # a broken install must still get a report
        return {"loadable": False, "error": str(exc)}
    backends = library.backend_dir()
    return {"loadable": True, "system_info": llama.system_info(),
            "build": library.llama_build(),
            "cpu_variant": llama.cpu_variant() or None,
            "backend_dir": str(backends) if backends else None,
            "gpu_offload": llama.local_gpu_count() > 0,
            "rpc_backend": bool(llama.rpc_available()),
            "output_head": {"obstacle": library.output_head_obstacle()},
            # decided per model when it loads (shimmy probe MODEL shows that one)
            "engine_profile": {"name": INVARIANT if deterministic else FAST,
                               "tiled_kquant_kernel": "off" if os.environ.get(
                                   "GGML_CPU_TILED_MM", "1").strip() in ("0", "") else "on",
                               "decided": "at each model's load, by BatchEngine.warm_up"}}


def _head_words(head: dict[str, Any]) -> str:
    """Who computes the logits: shimmy's output head or llama.cpp (see probe per model)."""
    if head["obstacle"]:
        return f"llama.cpp's ({head['obstacle']})"
    return "shimmy's for Q8_0 output matrices, checked against llama.cpp's at each load"


def _variant_words(llama: dict[str, Any]) -> str:
    """The libggml-cpu-<variant>.so ggml chose for this CPU, in a portable build."""
    if llama["cpu_variant"]:
        return f"{llama['cpu_variant']} (the best of those in {llama['backend_dir']})"
    return "built in (this llama.cpp was compiled for one CPU type: not portable)"


def _rpc_words(device: dict[str, Any]) -> str:
    """One RPC worker's device and its free memory, or why the worker cannot be used."""
    if "error" in device:
        return f"{device['endpoint']} {paint('UNUSABLE', 'red')}: {device['error']}"
    return (f"{device['name']} at {device['endpoint']}: {device['description']}, "
            f"{format_bytes(device['free_bytes'])} free of "
            f"{format_bytes(device['total_bytes'])}")


def _rpc_backend_words(installed: bool) -> str:
    if installed:
        return "installed: shimmy rpc-worker serves this CPU, --rpc splits models (docs/RPC.md)"
    return "not installed (scripts/setup.sh builds it): no rpc-worker, no --rpc"


def _offload_words(supported: bool, rpc: bool = False) -> str:
    if rpc:
        return "to the RPC devices below, the rest on this CPU"
    if supported:
        return "supported"
    return "not supported: CPU build, every layer runs on the CPU (--gpu-layers offloads nothing)"


def _port_facts(host: str, port: int) -> dict[str, Any]:
    problem = _bind_problem(host, port)
    holder = port_holder(port) if problem else None
    return {"host": host, "port": port, "free": problem is None, "problem": problem,
            "held_by": None if holder is None else {"pid": holder.pid,
                                                    "command": holder.command}}


def _port_words(port: dict[str, Any]) -> str:
    if port["free"]:
        return paint("is free", "green")
    held = port["held_by"]
    who = f"; held by pid {held['pid']} ({held['command']})" if held else ""
    return (f"{paint('is NOT free', 'red')} ({port['problem']}{who}); "
            "serve there with --port N, or stop that process")


def _bind_problem(host: str, port: int) -> str | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # as serve's listener does: a port left in TIME_WAIT is free for it
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
