"""The worker's progress listener holds the latest datagram while Redis is unavailable and stores it after, and
ignores the datagrams of an engine whose run is no longer the task's."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from shared.models import TaskStatus
from tests.support.farm import free_udp_port
from tests.workers.test_runtime import MakeRuntime, make_runtime, new_task  # noqa: F401 - fixture
from workers.runtime import RUN_ID_VARIABLE


@contextmanager
def engine_of(run_id: str) -> Iterator[int]:
    """A process standing in for an engine of `run_id` (its environment says so, as the worker sets it)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], env={**os.environ, RUN_ID_VARIABLE: run_id}
    )
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def send(port: int, pid: int, uuid: str, value: float) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(f"PGUP/{pid}/{uuid}/{value}".encode(), ("127.0.0.1", port))


def test_progress_received_during_a_redis_outage_lands_when_redis_returns(
    make_runtime: MakeRuntime,  # noqa: F811 - the imported fixture
) -> None:
    rt = make_runtime(progress_port=free_udp_port())
    uuid, run = new_task(rt.tasks, TaskStatus.RUNNING)
    real = rt.tasks.set_progress
    down = threading.Event()
    down.set()

    def set_progress(task: str, value: float, run_id: str = "") -> bool:
        if down.is_set():
            raise ConnectionError("Connection refused")
        return real(task, value, run_id)

    rt.tasks.set_progress = set_progress  # type: ignore[method-assign]
    listener = threading.Thread(target=rt._progress_listener, daemon=True)
    listener.start()
    try:
        time.sleep(0.2)
        with engine_of(run) as pid:
            for value in (10.0, 40.0, 30.0):  # the highest is what counts (progress never goes back)
                send(rt.settings.progress_port, pid, uuid, value)
            time.sleep(0.5)
        assert float(rt.tasks.field(uuid, "progress") or 0) == 0
        down.clear()

        def stored() -> Any:
            return float(rt.tasks.field(uuid, "progress") or 0)

        deadline = time.monotonic() + 3
        while stored() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stored() == 36.0  # 40 % of ODM's run is 36 % of the task's
    finally:
        rt.stopping.set()
        listener.join(3)


def test_datagrams_of_a_superseded_run_do_not_move_progress(
    make_runtime: MakeRuntime,  # noqa: F811 - the imported fixture
) -> None:
    rt = make_runtime(progress_port=free_udp_port())
    uuid, run = new_task(rt.tasks, TaskStatus.RUNNING)
    listener = threading.Thread(target=rt._progress_listener, daemon=True)
    listener.start()

    def stored() -> float:
        return float(rt.tasks.field(uuid, "progress") or 0)

    try:
        time.sleep(0.2)
        with engine_of("an-older-run") as stale, engine_of(run) as current:
            send(rt.settings.progress_port, stale, uuid, 90.0)
            send(rt.settings.progress_port, 999_999_999, uuid, 95.0)  # no such process: nobody's engine
            time.sleep(0.5)
            assert stored() == 0
            send(rt.settings.progress_port, current, uuid, 20.0)
            deadline = time.monotonic() + 3
            while stored() == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert stored() == 18.0
            send(rt.settings.progress_port, stale, uuid, 90.0)
            time.sleep(0.5)
            assert stored() == 18.0
    finally:
        rt.stopping.set()
        listener.join(3)


def test_a_burst_of_datagrams_is_stored_as_few_writes_ending_at_the_latest_value(
    make_runtime: MakeRuntime,  # noqa: F811 - the imported fixture
) -> None:
    rt = make_runtime(progress_port=free_udp_port())
    uuid, run = new_task(rt.tasks, TaskStatus.RUNNING)
    real = rt.tasks.set_progress
    writes: list[float] = []

    def set_progress(task: str, value: float, run_id: str = "") -> bool:
        writes.append(value)
        return real(task, value, run_id)

    rt.tasks.set_progress = set_progress  # type: ignore[method-assign]
    listener = threading.Thread(target=rt._progress_listener, daemon=True)
    listener.start()

    def stored() -> float:
        return float(rt.tasks.field(uuid, "progress") or 0)

    stack = ExitStack()
    try:
        time.sleep(0.2)
        engine = stack.enter_context(engine_of(run))
        for value in range(1, 41):  # ODM sends a datagram per step: 40 in a moment
            send(rt.settings.progress_port, engine, uuid, value)
        deadline = time.monotonic() + 3
        while stored() < 36.0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stored() == 36.0  # the latest value lands (40 % of ODM's run is 36 % of the task's)
        assert len(writes) <= 4  # not one write per datagram
        send(rt.settings.progress_port, engine, uuid, 100)
        deadline = time.monotonic() + 3
        while stored() < 90.0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stored() == 90.0  # the end of the engine's run is stored at once
    finally:
        rt.stopping.set()
        listener.join(3)
        stack.close()
