"""The worker's progress listener holds the latest datagram while Redis is unavailable and stores it after."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from shared.models import TaskStatus
from tests.support.farm import free_udp_port
from tests.workers.test_runtime import MakeRuntime, make_runtime, new_task  # noqa: F401 - fixture


def test_progress_received_during_a_redis_outage_lands_when_redis_returns(
    make_runtime: MakeRuntime,  # noqa: F811 - the imported fixture
) -> None:
    rt = make_runtime(progress_port=free_udp_port())
    uuid, _run = new_task(rt.tasks, TaskStatus.RUNNING)
    real = rt.tasks.set_progress
    down = threading.Event()
    down.set()

    def set_progress(task: str, value: float) -> bool:
        if down.is_set():
            raise ConnectionError("Connection refused")
        return real(task, value)

    rt.tasks.set_progress = set_progress  # type: ignore[method-assign]
    listener = threading.Thread(target=rt._progress_listener, daemon=True)
    listener.start()
    try:
        time.sleep(0.2)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for value in (10.0, 40.0, 30.0):  # the highest is what counts (progress never goes back)
                sock.sendto(f"PGUP/1/{uuid}/{value}".encode(), ("127.0.0.1", rt.settings.progress_port))
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


def test_a_burst_of_datagrams_is_stored_as_few_writes_ending_at_the_latest_value(
    make_runtime: MakeRuntime,  # noqa: F811 - the imported fixture
) -> None:
    rt = make_runtime(progress_port=free_udp_port())
    uuid, _run = new_task(rt.tasks, TaskStatus.RUNNING)
    real = rt.tasks.set_progress
    writes: list[float] = []

    def set_progress(task: str, value: float) -> bool:
        writes.append(value)
        return real(task, value)

    rt.tasks.set_progress = set_progress  # type: ignore[method-assign]
    listener = threading.Thread(target=rt._progress_listener, daemon=True)
    listener.start()

    def stored() -> float:
        return float(rt.tasks.field(uuid, "progress") or 0)

    try:
        time.sleep(0.2)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for value in range(1, 41):  # ODM sends a datagram per step: 40 in a moment
                sock.sendto(f"PGUP/1/{uuid}/{value}".encode(), ("127.0.0.1", rt.settings.progress_port))
        deadline = time.monotonic() + 3
        while stored() < 36.0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stored() == 36.0  # the latest value lands (40 % of ODM's run is 36 % of the task's)
        assert len(writes) <= 4  # not one write per datagram
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(f"PGUP/1/{uuid}/100".encode(), ("127.0.0.1", rt.settings.progress_port))
        deadline = time.monotonic() + 3
        while stored() < 90.0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stored() == 90.0  # the end of the engine's run is stored at once
    finally:
        rt.stopping.set()
        listener.join(3)
