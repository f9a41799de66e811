"""nginx or HAProxy in front of shimmy replicas on loopback, from ``deploy/``.

The deployed file is used as it is but for its addresses: each upstream (backend) lists
the given replicas, with the file's own server parameters, and the balancer listens on a
loopback port. It runs in the foreground with its pid, logs and temporary files in a
folder of its own, so it needs no root and leaves the system's services alone.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NGINX_CONF = REPO / "deploy" / "nginx" / "shimmy.conf"
HAPROXY_CONF = REPO / "deploy" / "haproxy" / "shimmy.cfg"
SERVER_LINE = re.compile(r"^(\s*)server 127\.0\.0\.1:\d+( [^;]*)?;$")
LISTEN_LINE = re.compile(r"^(\s*)listen 8080;$")
HAPROXY_SERVER = re.compile(r"^(\s*)server replica1 127\.0\.0\.1:\d+(.*)$")
HAPROXY_OTHER_SERVER = re.compile(r"^\s*server replica\d+ ")
HAPROXY_BIND = re.compile(r"^(\s*)bind :8080$")

MAIN_CONF = """\
daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log info;
{user}
events {{ worker_connections 512; }}
http {{
    access_log {folder}/access.log;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    include {include};
}}
"""


def find_nginx() -> str | None:
    found = shutil.which("nginx")
    return found or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)


def find_haproxy() -> str | None:
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def render(conf: str, replicas: list[int], listen: int) -> str:
    """``conf`` with each upstream's servers replaced by ``replicas`` and its listen port
    by ``listen`` on loopback; raises if the file no longer has the lines this replaces."""
    out: list[str] = []
    upstreams = listens = 0
    in_run = False
    for line in conf.splitlines():
        if match := SERVER_LINE.match(line):
            if not in_run:
                upstreams += 1
                indent, params = match.group(1), match.group(2) or ""
                out.extend(f"{indent}server 127.0.0.1:{port}{params};" for port in replicas)
            in_run = True
            continue
        in_run = False
        if match := LISTEN_LINE.match(line):
            listens += 1
            line = f"{match.group(1)}listen 127.0.0.1:{listen};"
        out.append(line)
    if upstreams != 2 or listens != 1:
        raise ValueError(f"expected 2 upstreams and 1 listen line, found {upstreams} and "
                         f"{listens}: update tests/balancer.py with the config")
    return "\n".join(out) + "\n"


def render_haproxy(conf: str, replicas: list[int], listen: int) -> str:
    """HAProxy's ``conf`` with each backend's servers replaced by ``replicas`` (named
    replica1, replica2, ... as in the file) and its bind address by loopback ``listen``."""
    out: list[str] = []
    backends = binds = 0
    for line in conf.splitlines():
        if match := HAPROXY_SERVER.match(line):
            backends += 1
            indent, params = match.groups()
            out.extend(f"{indent}server replica{n} 127.0.0.1:{port}"
                       + params.replace("replica1", f"replica{n}")
                       for n, port in enumerate(replicas, start=1))
        elif HAPROXY_OTHER_SERVER.match(line):
            continue
        elif match := HAPROXY_BIND.match(line):
            binds += 1
            out.append(f"{match.group(1)}bind 127.0.0.1:{listen}")
        else:
            out.append(line)
    if backends != 2 or binds != 1:
        raise ValueError(f"expected 2 backends and 1 bind line, found {backends} and "
                         f"{binds}: update tests/balancer.py with the config")
    return "\n".join(out) + "\n"


def main_conf(folder: Path, include: Path) -> str:
    # as root, nginx's workers would run as nobody, who cannot enter a private tmp folder
    user = "user root;" if os.geteuid() == 0 else ""
    return MAIN_CONF.format(folder=folder, include=include, user=user)


def check(binary: str, folder: Path, include: Path) -> subprocess.CompletedProcess:
    """``nginx -t`` on a main config that includes ``include``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test.conf").write_text(main_conf(folder, include))
    return subprocess.run([binary, "-t", "-e", str(folder / "error.log"), "-p", str(folder),
                           "-c", str(folder / "test.conf")], capture_output=True, text=True,
                          timeout=30)


class Balancer:
    """A balancer process in the foreground, listening on ``port``."""

    name = "balancer"

    def __init__(self, folder: Path, command: list[str], port: int) -> None:
        self.folder = folder
        self.port = port
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self._wait_listening()

    def _wait_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.proc.stdout.read()}{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} does not listen on {self.port}: {self.log()}")

    def log(self) -> str:
        path = self.folder / "error.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        self.proc.terminate()  # SIGTERM: a fast shutdown for both
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Nginx(Balancer):
    """nginx with ``deploy/nginx/shimmy.conf`` in front of ``replicas`` (ports)."""

    name = "nginx"

    def __init__(self, binary: str, folder: Path, replicas: list[int]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        port = free_port()
        (folder / "shimmy.conf").write_text(render(NGINX_CONF.read_text(), replicas, port))
        (folder / "nginx.conf").write_text(main_conf(folder, folder / "shimmy.conf"))
        super().__init__(folder, [binary, "-e", str(folder / "error.log"), "-p", str(folder),
                                  "-c", str(folder / "nginx.conf")], port)


class Haproxy(Balancer):
    """HAProxy with ``deploy/haproxy/shimmy.cfg`` in front of ``replicas`` (ports)."""

    name = "haproxy"

    def __init__(self, binary: str, folder: Path, replicas: list[int]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        port = free_port()
        config = folder / "haproxy.cfg"
        config.write_text(render_haproxy(HAPROXY_CONF.read_text(), replicas, port))
        super().__init__(folder, [binary, "-db", "-f", str(config)], port)
