"""Node rules on a real Redis: /info sums each host's cores and memory once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.node import Node
from shared.queue import make_celery
from shared.settings import Settings
from shared.storage import make_store
from shared.taskstore import TaskStore
from tests.support.farm import RedisServer


@pytest.fixture
def node(redis_server: RedisServer, tmp_path: Path) -> Iterator[Node]:
    settings = Settings(redis_url=redis_server.url(redis_server.fresh_db()), data_dir=tmp_path)
    tasks = TaskStore.from_url(settings.redis_url)
    yield Node(settings, tasks, make_store(settings), make_celery(settings))
    tasks.r.close()


def beat(node: Node, worker: str, host: str, slots: int) -> None:
    node.tasks.heartbeat(worker, {"id": worker, "name": worker, "host": host, "slots": slots, "queues": ["cpu"],
                                  "cpuCores": 8, "totalMemory": 16_000, "availableMemory": 9_000})


def test_info_counts_a_host_running_several_workers_once(node: Node) -> None:
    beat(node, "a1", "host-a", 2)
    beat(node, "a2", "host-a", 2)
    beat(node, "b1", "host-b", 1)
    info = node.info()
    assert info["workers"] == 3
    assert info["maxParallelTasks"] == 5, "slots are per worker"
    assert info["cpuCores"] == 16 and info["totalMemory"] == 32_000 and info["availableMemory"] == 18_000
