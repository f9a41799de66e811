"""Settings from the command line and the environment, checked once."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shimmy.engine.loaded import EngineSettings
from shimmy.models.discovery import DiscoveryReport, discover
from shimmy.sysinfo import physical_cores

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11435


class ConfigError(ValueError):
    """A setting that cannot work; the message says which and why."""


@dataclass(slots=True)
class Config:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    model_path: Path | None = None
    model_dirs: list[Path] = field(default_factory=list)
    parallel: int = 4
    ctx: int = 8192
    threads: int = 0  # 0: one per physical core
    gpu_layers: int = 0
    verbose: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Config:
        config = cls(verbose=getattr(args, "verbose", False))
        if bind := getattr(args, "bind", None):
            config.host, config.port = parse_bind(bind)
        if (port := getattr(args, "port", None)) is not None:
            config.port = port
        if model_path := getattr(args, "model_path", None):
            config.model_path = Path(model_path).expanduser()
        for dirs in getattr(args, "model_dirs", None) or ():
            config.model_dirs.extend(Path(d).expanduser() for d in dirs.split(";") if d)
        for name in ("parallel", "ctx", "threads", "gpu_layers"):
            if (value := getattr(args, name, None)) is not None:
                setattr(config, name, value)
        config.check()
        return config

    def check(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is outside 0-65535")
        if not 1 <= self.parallel <= 64:
            raise ConfigError(f"--parallel {self.parallel}: choose 1 to 64 slots")
        if self.ctx < 64:
            raise ConfigError(f"--ctx {self.ctx}: a context needs at least 64 tokens")
        if self.threads < 0:
            raise ConfigError(f"--threads {self.threads}: must be 0 (automatic) or more")

    @property
    def n_threads(self) -> int:
        return self.threads or physical_cores()

    def engine_settings(self) -> EngineSettings:
        return EngineSettings(ctx=self.ctx, parallel=self.parallel, threads=self.n_threads,
                              gpu_layers=self.gpu_layers)

    def discover(self, env: Mapping[str, str] | None = None) -> DiscoveryReport:
        return discover(self.model_path, self.model_dirs, env=os.environ if env is None else env)


def parse_bind(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--bind '{text}': expected HOST:PORT, e.g. 127.0.0.1:11435")
    host = host.strip("[]") or DEFAULT_HOST
    return host, int(port)
