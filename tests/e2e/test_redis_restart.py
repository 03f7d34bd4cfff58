"""A Redis restart (AOF on, as `odm-farm up` and compose run it): clients get slow answers, nothing is lost."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import requests

from odm_farm.redis_server import free_port, start_redis
from tests.e2e.helpers import make_images, wait_status
from tests.support.farm import Farm, farm_env


def test_redis_restart_during_a_task_loses_nothing(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "redis"
    server = start_redis(data, port, persistent=True)
    farm = Farm(tmp_path / "farm", farm_env(tmp_path / "farm", f"redis://127.0.0.1:{port}/0", token="t",
                                            simulate_seconds=4, lease_seconds=10), token="t")
    try:
        farm.start_api()
        farm.start_worker()
        task = farm.node().create_task(make_images(tmp_path / "in", 2), name="through the outage")
        wait_status(farm, task.uuid, (20,))

        server.terminate()
        server.wait(10)
        answers: dict[str, Any] = {}

        def ask() -> None:  # a client polling during the outage
            response = requests.get(f"{farm.url}/task/{task.uuid}/info", params={"token": "t"}, timeout=30)
            answers["status"], answers["body"] = response.status_code, response.json()

        poller = threading.Thread(target=ask)
        poller.start()
        time.sleep(2.0)
        server = start_redis(data, port, persistent=True)
        poller.join(30)
        assert answers["status"] == 200, answers
        assert answers["body"]["name"] == "through the outage", "a slow answer, not an error"

        info = wait_status(farm, task.uuid, (40, 30), timeout=90)
        assert info["status"]["code"] == 40, farm.logs()
        assert len(farm.get(f"/task/{task.uuid}/output").json()) > 10
    finally:
        farm.stop()
        server.terminate()
        server.wait(10)
