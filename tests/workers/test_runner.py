"""The engine runner with real subprocesses: console streaming, exit codes, and killing whole process trees."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from workers.engines.base import Command
from workers.runner import Run


class Console:
    """Collects what the runner hands to its console callback, with the time each batch arrived."""

    def __init__(self) -> None:
        self.batches: list[tuple[float, list[str]]] = []
        self.lock = threading.Lock()

    def __call__(self, lines: list[str]) -> None:
        with self.lock:
            self.batches.append((time.monotonic(), list(lines)))

    @property
    def lines(self) -> list[str]:
        with self.lock:
            return [line for _, batch in self.batches for line in batch]

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float = 10) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.lines
            if predicate(lines):
                return lines
            time.sleep(0.02)
        raise AssertionError(f"console never matched; got {self.lines!r}")


def python(script: str, **env: str) -> Command:
    return Command(argv=[sys.executable, "-c", textwrap.dedent(script)], env={MARKER: str(os.getpid()), **env})


def make_run(tmp_path: Path, script: str, **env: str) -> tuple[Run, Console]:
    console = Console()
    return Run(python(script, **env), console, tmp_path / "console.txt", tmp_path / "engine.pgid"), console


class Waiter(threading.Thread):
    """Run.wait() in a thread, so the test can kill while the runner streams."""

    def __init__(self, run: Run) -> None:
        super().__init__(daemon=True)
        self.run_ = run
        self.code: int | None = None

    def run(self) -> None:
        self.code = self.run_.wait()

    def result(self, timeout: float = 10) -> int:
        self.join(timeout)
        assert not self.is_alive(), "Run.wait() did not return"
        assert self.code is not None
        return self.code


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.02)
    return False


MARKER = "ODM_FARM_RUNNER_TEST"


@pytest.fixture(autouse=True)
def no_strays() -> Iterator[None]:
    """Every process a test starts carries a marker in its environment; whatever survives is SIGKILLed."""
    yield
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get(MARKER) == str(os.getpid()):
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass


# --- console and exit codes ---------------------------------------------------------------------
def test_console_lines_arrive_in_order_while_the_process_runs(tmp_path: Path) -> None:
    run, console = make_run(tmp_path, """
        import sys, time
        for i in range(300):
            print(f"line {i}")
        sys.stdout.flush()
        time.sleep(0.8)
        print("error text", file=sys.stderr, flush=True)
        sys.stdout.write("last without newline")
    """, PYTHONUNBUFFERED="0")
    run.start()
    started = time.monotonic()
    code = run.wait()
    ended = time.monotonic()
    expected = [f"line {i}" for i in range(300)] + ["error text", "last without newline"]
    assert code == 0
    assert console.lines == expected
    # streamed: the first lines were delivered well before the process ended
    first_batch_at = console.batches[0][0]
    assert first_batch_at - started < ended - started - 0.4
    assert (tmp_path / "console.txt").read_text().splitlines() == expected
    assert not (tmp_path / "engine.pgid").exists()


def test_console_of_a_busy_process_keeps_order_across_many_batches(tmp_path: Path) -> None:
    run, console = make_run(tmp_path, """
        import time
        for i in range(2000):
            print(i, flush=True)
            if i % 200 == 0:
                time.sleep(0.05)
    """)
    run.start()
    assert run.wait() == 0
    assert console.lines == [str(i) for i in range(2000)]
    assert len(console.batches) > 1


def test_console_replaces_bytes_that_are_not_utf8_and_strips_cr(tmp_path: Path) -> None:
    run, console = make_run(tmp_path, r"""
        import sys
        sys.stdout.buffer.write(b"ok \xff\xfe bytes\r\nnext\n")
    """)
    run.start()
    assert run.wait() == 0
    assert console.lines == ["ok \ufffd\ufffd bytes", "next"]


def test_env_and_cwd_reach_the_process(tmp_path: Path) -> None:
    console = Console()
    command = python("import os; print(os.environ['ODM_TEST_VALUE'], os.getcwd())", ODM_TEST_VALUE="abc")
    command.cwd = tmp_path
    run = Run(command, console, tmp_path / "console.txt")
    run.start()
    assert run.wait() == 0
    assert console.lines == [f"abc {tmp_path}"]


def test_pgid_file_holds_the_group_while_running(tmp_path: Path) -> None:
    run, console = make_run(tmp_path, "import os, time; print(os.getpgrp(), flush=True); time.sleep(0.5)")
    run.start()
    assert run.proc is not None
    assert (tmp_path / "engine.pgid").read_text() == str(run.proc.pid)
    assert run.wait() == 0
    assert console.lines == [str(run.proc.pid)]  # the engine leads its own process group
    assert not (tmp_path / "engine.pgid").exists()


@pytest.mark.parametrize(
    ("script", "code"),
    [
        ("pass", 0),
        ("import sys; sys.exit(1)", 1),
        ("import sys; sys.exit(3)", 3),
        ("import sys; sys.exit(137)", 137),
        ("raise SystemExit(255)", 255),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", -signal.SIGKILL),
        ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", -signal.SIGSEGV),
        ("import os; os.abort()", -signal.SIGABRT),
    ],
)
def test_exit_codes(tmp_path: Path, script: str, code: int) -> None:
    run, _ = make_run(tmp_path, script)
    run.start()
    assert run.wait() == code


# --- kill -----------------------------------------------------------------------------------------
def test_kill_terminates_the_group_and_a_grandchild_that_left_it(tmp_path: Path) -> None:
    # the grandchild keeps the console pipe open: wait() only returns once it is gone too
    run, console = make_run(tmp_path, """
        import os, subprocess, sys, time
        grandchild = subprocess.Popen([sys.executable, "-c",
            "import os, time; os.setsid(); os.write(1, b'escaped %d %d\\\\n' % (os.getpid(), os.getpgrp())); time.sleep(60)"])
        member = subprocess.Popen([sys.executable, "-c", "import os, time; os.write(1, b'member %d\\\\n' % os.getpid()); time.sleep(60)"])
        os.write(1, b"engine %d\\n" % os.getpid())
        time.sleep(60)
    """)
    run.start()
    waiter = Waiter(run)
    waiter.start()
    lines = console.wait_for(lambda ls: {line.split()[0] for line in ls} >= {"escaped", "engine", "member"})
    pids = {line.split()[0]: int(line.split()[1]) for line in lines}
    escaped = next(line for line in lines if line.startswith("escaped"))
    assert int(escaped.split()[2]) == pids["escaped"]  # it really leads a session and group of its own
    assert os.getpgid(pids["escaped"]) != run.proc.pid  # type: ignore[union-attr]

    started = time.monotonic()
    run.kill(grace=1.0)
    assert waiter.result(10) == -signal.SIGTERM
    assert time.monotonic() - started < 5
    for name, pid in pids.items():
        assert wait_gone(pid), f"{name} ({pid}) survived kill()"


def test_kill_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path: Path) -> None:
    run, console = make_run(tmp_path, """
        import os, signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        subprocess.Popen([sys.executable, "-c",
            "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); os.setsid(); "
            "os.write(1, b'child %d\\\\n' % os.getpid()); time.sleep(60)"])
        os.write(1, b"engine %d\\n" % os.getpid())
        time.sleep(60)
    """)
    run.start()
    waiter = Waiter(run)
    waiter.start()
    lines = console.wait_for(lambda ls: len(ls) >= 2)
    pids = [int(line.split()[1]) for line in lines]
    started = time.monotonic()
    run.kill(grace=0.3)
    assert waiter.result(10) == -signal.SIGKILL
    assert time.monotonic() - started < 5
    assert all(wait_gone(pid) for pid in pids)


def test_kill_reaches_the_group_after_its_leader_exited(tmp_path: Path) -> None:
    # e.g. a wrapper script that ended while the program it started still runs and writes the console
    run, console = make_run(tmp_path, """
        import os, subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import os, time; print('left', os.getpid(), flush=True); time.sleep(60)"])
    """)
    run.start()
    waiter = Waiter(run)
    waiter.start()
    lines = console.wait_for(lambda ls: any(line.startswith("left") for line in ls))
    left = int(lines[0].split()[1])
    assert run.proc is not None
    deadline = time.monotonic() + 5
    while run.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert run.proc.poll() == 0  # the leader is gone, its group is not
    run.kill(grace=0.5)
    assert waiter.result(10) == 0
    assert wait_gone(left)


def test_kill_before_start(tmp_path: Path) -> None:
    run, console = make_run(tmp_path, "import time; print('started', flush=True); time.sleep(60)")
    run.kill()
    assert run.killed.is_set()
    started = time.monotonic()
    run.start()
    assert run.wait() < 0
    assert time.monotonic() - started < 5


def test_kill_after_exit_is_harmless(tmp_path: Path) -> None:
    run, console = make_run(tmp_path, "print('done')")
    run.start()
    assert run.wait() == 0
    run.kill()
    run.kill()
    assert console.lines == ["done"]


# --- a failing console receiver (e.g. Redis restarting) --------------------------------------------
class FlakyConsole(Console):
    """Raises like a Redis client during an outage until `down` is cleared."""

    def __init__(self) -> None:
        super().__init__()
        self.down = threading.Event()
        self.refused = 0

    def __call__(self, lines: list[str]) -> None:
        if self.down.is_set():
            self.refused += 1
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        super().__call__(lines)


def test_console_lines_survive_a_receiver_outage_in_order_while_the_process_runs(tmp_path: Path) -> None:
    console = FlakyConsole()
    run = Run(python("""
        import time
        for i in range(60):
            print(i, flush=True)
            time.sleep(0.05)
        time.sleep(3)
        print("last", flush=True)
    """), console, tmp_path / "console.txt")
    console.down.set()
    run.start()
    waiter = Waiter(run)
    waiter.start()
    time.sleep(1.0)  # the receiver refuses the first second of lines
    assert console.refused > 0
    console.down.clear()
    # the flusher is still alive: the held lines arrive while the engine is still running
    lines = console.wait_for(lambda ls: len(ls) >= 60, timeout=2.5)
    assert run.proc is not None and run.proc.poll() is None
    waiter.join(10)
    assert waiter.code == 0
    assert console.lines == [str(i) for i in range(60)] + ["last"], lines


def test_flusher_numbers_lines_so_a_resent_batch_can_be_recognised() -> None:
    from workers.runner import Flusher

    stored: list[str] = []
    calls: list[tuple[list[str], int]] = []
    lose_reply = [True]

    def send(lines: list[str], first: int) -> None:
        calls.append((list(lines), first))
        new = lines[max(0, len(stored) - first + 1):]  # what a numbered store keeps
        stored.extend(new)
        if lose_reply[0]:
            lose_reply[0] = False
            raise TimeoutError("reply lost")

    out = Flusher(send)
    out.write(["a", "b"])
    assert not out.flush()  # stored, but the sender does not know
    out.write(["c"])
    assert out.flush()
    assert calls == [(["a", "b"], 1), (["a", "b", "c"], 1)]
    out.write(["d"])
    assert out.flush()
    assert calls[-1] == (["d"], 4)
    assert stored == ["a", "b", "c", "d"]


def test_flusher_limit_keeps_the_first_lines_and_the_last_ones() -> None:
    from workers.runner import Flusher

    got: list[str] = []
    out = Flusher(lambda lines, _first: got.extend(lines), limit=10)
    out.write([str(i) for i in range(100)])
    assert out.flush()
    assert got[:5] == ["0", "1", "2", "3", "4"] and len(got) == 6 and "limit of 10 lines" in got[5]
    assert out.close(1)
    assert "90 console lines were left out" in got[6]
    assert got[7:] == ["95", "96", "97", "98", "99"]
