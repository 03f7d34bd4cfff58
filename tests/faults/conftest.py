"""Fixtures of the fault suite: farms shared by the tests of one module, and webhook receivers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.farm import TOKEN, Farm, RedisServer, farm_env
from tests.support.local_http import LocalServer, local_server, reply

# Fast failure detection: a lost worker's task is re-queued within lease + reaper period (~4 s).
FAST = {
    "worker_slots": 1,
    "lease_seconds": 3,
    "heartbeat_seconds": 0.5,
    "worker_ttl": 3,
    "simulate_seconds": 1.5,
    "max_attempts": 3,
}


@pytest.fixture(scope="module")
def module_farms(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """make(workers=("w1", "w2"), **settings) -> Farm: one API and named workers, stopped at module end."""
    farms: list[Farm] = []

    def make(
        workers: tuple[str, ...] = ("w1", "w2"), env: dict[str, str] | None = None, **settings: Any
    ) -> Farm:
        root = tmp_path_factory.mktemp("faultfarm")
        variables = farm_env(
            root, redis_server.url(redis_server.fresh_db()), token=TOKEN, **{**FAST, **settings}
        )
        variables.update(env or {})
        farm = Farm(root, variables, token=TOKEN)
        farms.append(farm)
        farm.start_api()
        for name in workers:
            farm.start_worker(name)
        return farm

    yield make
    for farm in farms:
        farm.stop()


@pytest.fixture
def webhook_receiver() -> Iterator[LocalServer]:
    """An HTTP receiver on 127.0.0.1 answering 200 on /hook and recording every delivery."""
    with local_server() as server:
        server.routes["/hook"] = lambda handler: reply(handler, 200, b"ok")
        yield server
