"""Who holds a TCP port, for errors that say more than "address already in use".

Linux only: the listening socket's inode comes from ``/proc/net/tcp{,6}``, its owner from
the ``socket:[inode]`` links in ``/proc/PID/fd``. Processes of other users are invisible
to an unprivileged user; then the answer is None and the message says less.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TCP_LISTEN = "0A"
_PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class PortHolder:
    pid: int
    command: str

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.command})"


def port_holder(port: int, proc: Path = _PROC) -> PortHolder | None:
    """The process listening on TCP ``port``, if this user can see it."""
    inodes = listening_inodes(port, proc)
    if not inodes:
        return None
    for entry in _pids(proc):
        if _holds_any(entry, inodes):
            return PortHolder(int(entry.name), _command_line(entry))
    return None


def busy_port_advice(port: int) -> str:
    """A sentence for a port that is taken: by whom, and how to use another."""
    holder = port_holder(port)
    who = f" by {holder}" if holder else ""
    return (f"the port is already in use{who}; stop that process, or choose another port "
            f"with --port N (e.g. --port {port + 1 if port < 65535 else 11436})")


def listening_inodes(port: int, proc: Path = _PROC) -> set[str]:
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _TCP_LISTEN:
                continue
            if int(fields[1].rpartition(":")[2], 16) == port:
                inodes.add(fields[9])
    return inodes


def _pids(proc: Path) -> list[Path]:
    try:
        return [entry for entry in proc.iterdir() if entry.name.isdigit()]
    except OSError:
        return []


def _holds_any(pid_dir: Path, inodes: set[str]) -> bool:
    try:
        fds = os.listdir(pid_dir / "fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(pid_dir / "fd" / fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


def _command_line(pid_dir: Path) -> str:
    try:
        words = (pid_dir / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return "unknown command"
    text = " ".join(" ".join(word.decode(errors="replace").split()) for word in words if word)
    return text if len(text) <= 80 else text[:77] + "..."
