"""Settings from the command line and the environment, checked once."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shimmy.engine.loaded import KV_CACHE_TYPES, MAX_DRAFT, EngineSettings
from shimmy.engine.pool import DEFAULT_KEEP_ALIVE, DEFAULT_MAX_MODELS, PoolLimits, parse_keep_alive
from shimmy.engine.rpc import parse_endpoints
from shimmy.models.discovery import DiscoveryReport, discover
from shimmy.sysinfo import physical_cores, total_memory_bytes

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11435
DEFAULT_OLLAMA_BIND = "127.0.0.1:11434"  # Ollama's own address, which its clients assume
API_KEY_ENV = "SHIMMY_API_KEY"
# the model pool's options, each also read from the environment when its flag is not given
POOL_ENV = {"keep_alive": "SHIMMY_KEEP_ALIVE", "max_models": "SHIMMY_MAX_MODELS",
            "memory_budget": "SHIMMY_MEMORY_BUDGET"}
# --model-alias entries, ','-separated, when no flag is given
MODEL_ALIAS_ENV = "SHIMMY_MODEL_ALIAS"
DETERMINISTIC_ENV = "SHIMMY_DETERMINISTIC"
# the profiles' own cache types and prompt chunks, where no flag names them
# KV cache type, prompt chunk (the unit of reuse where rows do not round alike) and prompt
# rows per pass, keyed by deterministic: 256 rows a pass read a prompt about 15% faster
# than 64 here (docs/BENCHMARKS.md); the invariant engine keeps its 64-row passes
PROFILE_DEFAULTS = {False: ("f16", 64, 256), True: ("bf16", 64, 64)}
RPC_ENV = "SHIMMY_RPC"  # --rpc's workers when no flag is given
DEFAULT_MEMORY_FRACTION = 0.8  # of physical memory, when no --memory-budget is given
DEFAULT_PROMPT_CACHE = 256 * 1024**2  # bytes of slots' cells kept per model by `serve`
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]i?b?|b)?", re.I)


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
    gpu_layers: int = 0  # with rpc: -1, every layer on the workers, unless given
    rpc: tuple[str, ...] = ()  # llama.cpp RPC workers, HOST:PORT (docs/RPC.md)
    tensor_split: tuple[float, ...] = ()  # shares of the offloaded layers per RPC device
    kv_cache_type: str | None = None  # None: the profile's (f16; deterministic: bf16)
    flash_attn: str | None = None  # over an f16 cache: "on", "off"; None: the profile's
    draft: int = 3
    batch_size: int | None = None  # prompt tokens per chunk; None: 64
    deterministic: bool = False  # the batch-invariant engine profile
    max_tokens: int = 0  # the most tokens one answer may generate; 0: what the context leaves
    verbose: bool = False
    # serving: who may connect, how much may wait, how long things may take
    api_key: str | None = None
    allowed_hosts: list[str] = field(default_factory=list)
    cors_origins: list[str] = field(default_factory=list)
    max_queue: int = 64
    max_connections: int = 512
    header_timeout: float = 30.0
    idle_timeout: float = 5.0
    shutdown_grace: float = 10.0
    # the model pool: how long idle models stay, and how many may be in memory
    keep_alive: float = DEFAULT_KEEP_ALIVE  # seconds; math.inf: forever
    max_models: int = DEFAULT_MAX_MODELS  # 0: no limit
    memory_budget: int | None = None  # bytes; None: a fraction of physical memory; 0: none
    prompt_cache: int = 0  # bytes of replaced slots' cells kept per model (serve: 256 MiB)
    # the second listener, with Ollama's API (serve only); None: off
    ollama_bind: tuple[str, int] | None = None
    # requested model names (fnmatch patterns) mapped to served models, first match wins
    model_aliases: list[tuple[str, str]] = field(default_factory=list)

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
        for name in ("parallel", "ctx", "threads", "gpu_layers", "kv_cache_type", "draft",
                     "batch_size", "flash_attn"):
            if (value := getattr(args, name, None)) is not None:
                setattr(config, name, value)
        if config.flash_attn == "auto":
            config.flash_attn = None
        config.deterministic = bool(getattr(args, "deterministic", False)) or \
            os.environ.get(DETERMINISTIC_ENV, "").strip().lower() in ("1", "true", "yes", "on")
        if getattr(args, "command", None) == "serve" and args.max_tokens is not None:
            config.max_tokens = args.max_tokens
        config._rpc_args(args)
        config._serving_args(args)
        config.check()
        return config

    def _rpc_args(self, args: argparse.Namespace) -> None:
        """--rpc (else SHIMMY_RPC) and --tensor-split, for the commands that load models."""
        if not hasattr(args, "rpc"):
            return
        text, source = args.rpc, "--rpc"
        if text is None:
            text, source = os.environ.get(RPC_ENV) or None, RPC_ENV
        if args.tensor_split is not None:
            self.tensor_split = parse_tensor_split(args.tensor_split)
        if text is None:
            if self.tensor_split:
                raise ConfigError("--tensor-split shares layers among RPC devices: give --rpc")
            return
        try:
            self.rpc = parse_endpoints(text, source)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if args.gpu_layers is None:
            self.gpu_layers = -1  # llama.cpp: every layer (with the output layer) offloaded

    def _serving_args(self, args: argparse.Namespace) -> None:
        if not hasattr(args, "api_key"):
            return  # not ``serve``
        self.prompt_cache = DEFAULT_PROMPT_CACHE
        self.ollama_bind = parse_ollama_bind(getattr(args, "ollama_bind", None)
                                             or DEFAULT_OLLAMA_BIND)
        if args.prompt_cache is not None:
            try:
                self.prompt_cache = parse_size(args.prompt_cache)
            except ValueError as exc:
                raise ConfigError(f"--prompt-cache '{args.prompt_cache}': {exc}") from None
        env_key = os.environ.get(API_KEY_ENV) or None
        self.api_key = args.api_key if args.api_key is not None else env_key
        for hosts in args.allowed_hosts or ():
            self.allowed_hosts.extend(h.strip() for h in hosts.split(",") if h.strip())
        self.cors_origins.extend(args.cors_origin or ())
        for name in ("max_queue", "max_connections", "header_timeout", "idle_timeout",
                     "shutdown_grace"):
            if (value := getattr(args, name)) is not None:
                setattr(self, name, value)
        self._pool_args(args)
        self._alias_args(args)

    def _alias_args(self, args: argparse.Namespace) -> None:
        """--model-alias PATTERN=MODEL (repeatable), else SHIMMY_MODEL_ALIAS."""
        entries, source = getattr(args, "model_alias", None), "--model-alias"
        if not entries:
            variable = os.environ.get(MODEL_ALIAS_ENV) or ""
            entries, source = [e for e in variable.split(",") if e.strip()], MODEL_ALIAS_ENV
        for entry in entries:
            try:
                self.model_aliases.append(parse_alias(entry))
            except ValueError as exc:
                raise ConfigError(f"{source} '{entry}': {exc}") from None

    def _pool_args(self, args: argparse.Namespace) -> None:
        """--keep-alive, --max-models and --memory-budget, else their SHIMMY_* variables."""
        parsers = {"keep_alive": parse_keep_alive, "max_models": _count,
                   "memory_budget": parse_size}
        for name, parse in parsers.items():
            flag, variable = "--" + name.replace("_", "-"), POOL_ENV[name]
            value, source = getattr(args, name), flag
            if value is None:
                value, source = os.environ.get(variable) or None, variable
            if value is None:
                continue
            try:
                setattr(self, name, parse(value))
            except ValueError as exc:
                raise ConfigError(f"{source} '{value}': {exc}") from None

    def check(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is outside 0-65535")
        if not 1 <= self.parallel <= 64:
            raise ConfigError(f"--parallel {self.parallel}: choose 1 to 64 slots")
        if self.ctx < 64:
            raise ConfigError(f"--ctx {self.ctx}: a context needs at least 64 tokens")
        if self.threads < 0:
            raise ConfigError(f"--threads {self.threads}: must be 0 (automatic) or more")
        if self.kv_cache_type is not None and self.kv_cache_type not in KV_CACHE_TYPES:
            raise ConfigError(f"--kv-cache-type {self.kv_cache_type}: choose one of "
                              + ", ".join(KV_CACHE_TYPES))
        self._check_attention()
        if self.batch_size is not None and not 16 <= self.batch_size <= 4096:
            raise ConfigError(f"--batch-size {self.batch_size}: choose 16 to 4096 tokens")
        if self.max_tokens < 0:
            raise ConfigError(f"--n-predict {self.max_tokens}: must be 0 (no cap) or more")
        if not 0 <= self.draft <= MAX_DRAFT:
            raise ConfigError(f"--draft {self.draft}: choose 0 (off) to {MAX_DRAFT}")
        self._check_serving()

    def _check_attention(self) -> None:
        if self.flash_attn not in (None, "on", "off"):
            raise ConfigError(f"--flash-attn {self.flash_attn}: choose on, off or auto")
        if self.flash_attn == "on" and self.deterministic:
            raise ConfigError("--flash-attn on with --deterministic: flash attention over an "
                              "f16 cache is not batch-invariant (the invariant profile runs "
                              "flash attention over its bf16 and q8_0 caches already)")
        if self.flash_attn == "off" and self.kv_cache_type in ("bf16", "q8_0"):
            raise ConfigError(f"--flash-attn off with --kv-cache-type {self.kv_cache_type}: "
                              "bf16 and q8_0 caches always run flash attention; plain "
                              "attention runs over f16")

    @property
    def flash_f16(self) -> bool:
        """Flash attention over an f16 cache: the fast profile's default, as llama-server's."""
        return self.flash_attn == "on" or (self.flash_attn is None and not self.deterministic)

    def _check_serving(self) -> None:
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("--api-key: the key is empty")
        if self.max_queue < 0:
            raise ConfigError(f"--max-queue {self.max_queue}: must be 0 or more")
        if self.max_connections < 1:
            raise ConfigError(f"--max-connections {self.max_connections}: must be 1 or more")
        for flag, value in (("--header-timeout", self.header_timeout),
                            ("--idle-timeout", self.idle_timeout)):
            if not value > 0:
                raise ConfigError(f"{flag} {value}: must be more than 0 seconds")
        if not self.shutdown_grace >= 0:
            raise ConfigError(f"--shutdown-grace {self.shutdown_grace}: must be 0 or more")
        for origin in self.cors_origins:
            if origin != "*" and not re.fullmatch(r"[a-z][a-z0-9+.-]*://[^/\s]+", origin, re.I):
                raise ConfigError(f"--cors-origin '{origin}': expected '*' or "
                                  "SCHEME://HOST[:PORT], e.g. http://localhost:3000")

    @property
    def n_threads(self) -> int:
        return self.threads or physical_cores()

    def engine_settings(self) -> EngineSettings:
        kv_type, batch, ubatch = PROFILE_DEFAULTS[self.deterministic]
        return EngineSettings(ctx=self.ctx, parallel=self.parallel, threads=self.n_threads,
                              gpu_layers=self.gpu_layers, kv_type=self.kv_cache_type or kv_type,
                              flash_f16=self.flash_f16,
                              draft=self.draft, prompt_cache=self.prompt_cache,
                              batch=self.batch_size or batch, ubatch=ubatch,
                              max_tokens=self.max_tokens,
                              deterministic=self.deterministic, rpc=self.rpc,
                              tensor_split=self.tensor_split)

    def pool_limits(self) -> PoolLimits:
        budget = self.memory_budget
        if budget is None:
            budget = int((total_memory_bytes() or 0) * DEFAULT_MEMORY_FRACTION)
        return PoolLimits(keep_alive=self.keep_alive, max_models=self.max_models,
                          memory_budget=budget)

    def discover(self, env: Mapping[str, str] | None = None) -> DiscoveryReport:
        return discover(self.model_path, self.model_dirs, env=os.environ if env is None else env)


def parse_size(text: str) -> int:
    """Bytes from "8GiB", "512M", "8GB" (KiB/MiB/GiB/TiB and K/M/G/T are powers of 1024,
    KB/MB/GB/TB of 1000), "75%" of physical memory, or a plain number of bytes."""
    text = text.strip()
    if text.endswith("%"):
        percent = _non_negative(text[:-1], "a percentage")
        if percent > 100:
            raise ValueError("a percentage of physical memory must be 0 to 100")
        return int((total_memory_bytes() or 0) * percent / 100)
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError("expected a size such as 8GiB, 512MiB, 75% or a number of bytes")
    unit = (match[2] or "b").lower()
    base = 1000 if len(unit) == 2 and unit[1] == "b" else 1024
    return int(float(match[1]) * base ** "bkmgt".index(unit[0]))


def parse_tensor_split(text: str) -> tuple[float, ...]:
    """``--tensor-split 3,1``: shares of the offloaded layers per device, in order."""
    try:
        shares = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--tensor-split '{text}': expected numbers such as 3,1") from None
    if not all(share >= 0 for share in shares) or not sum(shares) > 0 or len(shares) > 16:
        raise ConfigError(f"--tensor-split '{text}': 1 to 16 shares of 0 or more, "
                          "not all 0")
    return shares


def parse_alias(text: str) -> tuple[str, str]:
    """``PATTERN=MODEL``: requested names matching PATTERN (``*`` globs) go to MODEL."""
    pattern, sep, target = text.partition("=")
    if not sep or not pattern.strip() or not target.strip():
        raise ValueError("expected PATTERN=MODEL, e.g. 'claude-*=qwen2.5-coder-7b'")
    return pattern.strip(), target.strip()


def _count(value: str | int) -> int:
    text = str(value).strip()
    if not text.isdigit():
        raise ValueError("expected a whole number of models, 0 for no limit")
    return int(text)


def _non_negative(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected {what}") from None
    if not value >= 0:
        raise ValueError(f"expected {what} of 0 or more")
    return value


def parse_bind(text: str, flag: str = "--bind", example: str = "127.0.0.1:11435"
               ) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{flag} '{text}': expected HOST:PORT, e.g. {example}")
    if int(port) > 65535:
        raise ConfigError(f"{flag} '{text}': port {port} is outside 0-65535")
    host = host.strip("[]") or DEFAULT_HOST
    return host, int(port)


def parse_ollama_bind(text: str) -> tuple[str, int] | None:
    """``--ollama-bind``: HOST:PORT, or "off" for no Ollama listener."""
    if text.strip().lower() == "off":
        return None
    return parse_bind(text.strip(), "--ollama-bind", DEFAULT_OLLAMA_BIND)
