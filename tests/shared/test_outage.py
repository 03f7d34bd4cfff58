"""shared/outage.py: Redis commands retried for a time budget, one budget per scope (one API request)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis

from odm_farm.redis_server import free_port, start_redis
from shared.outage import hold_scope
from shared.taskstore import TaskStore


def test_outside_a_scope_each_command_is_retried_for_the_budget_then_fails() -> None:
    store = TaskStore.from_url(f"redis://127.0.0.1:{free_port()}/0", hold_seconds=0.6)
    start = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        store.r.get("x")
    # redis-py nests a connect retry inside the command retry: still one budget, not two
    assert 0.6 <= time.monotonic() - start < 1.2


def test_commands_of_one_scope_share_one_budget() -> None:
    store = TaskStore.from_url(f"redis://127.0.0.1:{free_port()}/0")
    start = time.monotonic()
    with hold_scope(0.6) as hold:
        for _ in range(3):
            with pytest.raises(redis.ConnectionError):
                store.r.get("x")
    assert hold.failed
    assert 0.6 <= time.monotonic() - start < 1.2


def test_a_command_waits_for_redis_to_come_back(tmp_path: Path) -> None:
    port = free_port()
    store = TaskStore.from_url(f"redis://127.0.0.1:{port}/0", hold_seconds=10)
    server = None

    def later() -> None:
        nonlocal server
        time.sleep(1.0)
        server = start_redis(tmp_path, port, persistent=False)

    starter = threading.Thread(target=later)
    starter.start()
    try:
        start = time.monotonic()
        assert store.r.set("x", "1") is True
        assert 1.0 <= time.monotonic() - start < 3.0, "answered within a pause of Redis returning"
    finally:
        starter.join()
        if server is not None:
            server.terminate()
            server.wait(10)
