"""Runs an engine command in its own process group, streams its console, and kills the whole tree on demand."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import psutil

from workers.engines.base import Command

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.2
RETRY_MAX_SECONDS = 2.0
BATCH_LINES = 1000  # one console write stays small even after a long outage
TAIL_LINES = 1000  # lines kept from the end of a console longer than its limit


class Flusher:
    """Hands lines to `send` in order from a background thread, so a slow or failing receiver never blocks the
    producer. A failed send loses nothing: the same lines are sent again first, with the same numbers
    (`send(lines, first)`, `first` counting from 1), so a receiver that saw them already can skip them."""

    def __init__(
        self, send: Callable[[list[str], int], object], period: float = FLUSH_SECONDS, limit: int = 0
    ) -> None:
        self._send = send
        self.period = period
        self._pending: list[str] = []
        # limit > 0: keep the first lines, hold the rest back and release only the last `tail` of them
        self.limit = limit
        self._head = max(1, limit - min(TAIL_LINES, limit // 2)) if limit else 0
        self._tail: deque[str] = deque(maxlen=max(1, limit - self._head))
        self._written = 0
        self._omitted = 0
        self._lock = threading.Lock()  # guards _pending (the producer appends while a send is under way)
        self._send_lock = threading.Lock()  # one batch in flight at a time: numbers stay in order
        self._sent = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0

    def write(self, lines: list[str]) -> None:
        with self._lock:
            if not self.limit:
                self._pending.extend(lines)
                return
            for line in lines:
                self._written += 1
                if self._written <= self._head:
                    self._pending.append(line)
                    continue
                if self._written == self._head + 1:
                    self._pending.append(
                        f"[farm] This console reached its limit of {self.limit} lines: further lines are held"
                        f" back and the last {self._tail.maxlen} are shown when the run ends."
                    )
                if len(self._tail) == self._tail.maxlen:
                    self._omitted += 1
                self._tail.append(line)

    def release(self) -> None:
        """Queue the held-back last lines (after a line saying how many were left out)."""
        with self._lock:
            if self._omitted:
                self._pending.append(f"[farm] {self._omitted} console lines were left out here.")
            self._pending.extend(self._tail)
            self._tail.clear()
            self._omitted = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="console-flusher", daemon=True)
            self._thread.start()

    def flush(self) -> bool:
        """Send what is pending; False when a send failed (the lines stay pending)."""
        with self._send_lock:
            while True:
                with self._lock:
                    batch = self._pending[:BATCH_LINES]
                if not batch:
                    return True
                try:
                    self._send(batch, self._sent + 1)
                except Exception as exc:  # noqa: BLE001 - e.g. Redis is restarting: keep the lines, retry
                    self.failures += 1
                    if self.failures == 1 or self.failures % 50 == 0:
                        log.warning("console: %s; %d line(s) kept for a retry", exc, self.pending)
                    return False
                with self._lock:
                    del self._pending[: len(batch)]
                self._sent += len(batch)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def _loop(self) -> None:
        delay = self.period
        while not self._stop.wait(delay):
            delay = self.period if self.flush() else min(RETRY_MAX_SECONDS, delay * 2)

    def close(self, timeout: float) -> bool:
        """Stop the thread and send the rest, retrying for up to `timeout` s; False if lines were left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.release()
        deadline = time.monotonic() + timeout
        delay = self.period
        while not self.flush():
            if time.monotonic() + delay > deadline:
                log.error("console: %d line(s) could not be sent", self.pending)
                return False
            time.sleep(delay)
            delay = min(RETRY_MAX_SECONDS, delay * 2)
        return True

    def drain(self, timeout: float) -> bool:
        """Send everything written so far (retrying for up to `timeout` s) while the thread keeps running."""
        deadline = time.monotonic() + timeout
        while not self.flush():
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(RETRY_MAX_SECONDS, max(0.0, deadline - time.monotonic())))
        return True


class Run:
    """One engine process. kill() may be called from any thread, before or after start."""

    def __init__(
        self,
        command: Command,
        console: Callable[[list[str]], None],
        log_file: Path,
        pgid_file: Path | None = None,
        drain_seconds: float = 60.0,
    ) -> None:
        self.command = command
        self.console = console
        self.log_file = log_file
        self.pgid_file = pgid_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.killed = threading.Event()
        self.finished = threading.Event()  # wait() has returned: nothing of this run is left to kill
        self._out = Flusher(lambda lines, _first: console(lines))
        self.drain_seconds = drain_seconds

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
        self._out.start()
        with open(self.log_file, "a", encoding="utf-8") as log_out:
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                log_out.write(line + "\n")
                self._out.write([line])
        code = self.proc.wait()
        self._out.close(self.drain_seconds)
        if self.pgid_file:
            self.pgid_file.unlink(missing_ok=True)
        self.finished.set()
        return code

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
