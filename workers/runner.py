"""Runs an engine command in its own process group, streams its console, and kills the whole tree on demand."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from workers.engines.base import Command

FLUSH_SECONDS = 0.2


class Run:
    """One engine process. kill() may be called from any thread, before or after start."""

    def __init__(
        self,
        command: Command,
        console: Callable[[list[str]], None],
        log_file: Path,
        pgid_file: Path | None = None,
    ) -> None:
        self.command = command
        self.console = console
        self.log_file = log_file
        self.pgid_file = pgid_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.killed = threading.Event()
        self.finished = threading.Event()  # wait() has returned: nothing of this run is left to kill
        self._pending: list[str] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        env = {**os.environ, **self.command.env}
        self.proc = subprocess.Popen(
            self.command.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.command.cwd,
            env=env,
            start_new_session=True,
        )
        if self.pgid_file:
            self.pgid_file.write_text(str(self.proc.pid))
        if self.killed.is_set():
            self.kill()

    def wait(self) -> int:
        """Stream the console until the process ends; returns its exit code (negative = signal)."""
        assert self.proc is not None and self.proc.stdout is not None
        stop = threading.Event()
        flusher = threading.Thread(target=self._flush_loop, args=(stop,), daemon=True)
        flusher.start()
        with open(self.log_file, "a", encoding="utf-8") as log:
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                log.write(line + "\n")
                with self._lock:
                    self._pending.append(line)
        code = self.proc.wait()
        stop.set()
        flusher.join()
        self._flush()
        if self.pgid_file:
            self.pgid_file.unlink(missing_ok=True)
        self.finished.set()
        return code

    def _flush_loop(self, stop: threading.Event) -> None:
        while not stop.wait(FLUSH_SECONDS):
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            lines, self._pending = self._pending, []
        if lines:
            self.console(lines)

    def kill(self, grace: float = 1.0) -> None:
        """SIGTERM the process group (and any descendant that left it), SIGKILL what is left after `grace`."""
        self.killed.set()
        # not proc.poll(): a leader that exited can leave group members running that hold the console open
        if self.proc is None or self.finished.is_set():
            return
        kill_tree(self.proc.pid, grace)


def kill_tree(pid: int, grace: float = 1.0) -> None:
    try:
        descendants = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    _signal_group(pid, signal.SIGTERM)
    for proc in descendants:
        _signal(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = [p for p in [_process(pid), *descendants] if p is not None]
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        time.sleep(0.05)
    _signal_group(pid, signal.SIGKILL)
    for proc in alive:
        _signal(proc, signal.SIGKILL)


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _signal(proc: psutil.Process, sig: int) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.send_signal(sig)
