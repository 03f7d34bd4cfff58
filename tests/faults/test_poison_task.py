"""A task that takes its worker down every time: FAILED after ODM_FARM_MAX_ATTEMPTS runs, with its webhook.

The test plays the poison: whenever a worker claims the task and starts its engine, that worker host is
killed (kill -9 of the Celery main process and the engine) and a fresh worker host is started in its place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.e2e.helpers import make_images, slow_image, wait_status
from tests.support.farm import Farm, wait_until
from tests.support.faults import Timeline, kill_worker, record, wait_claim, wait_phase
from tests.support.local_http import LocalServer

MAX_ATTEMPTS = 3


def test_a_task_that_kills_its_worker_every_time_fails_with_a_webhook(
    module_farms: Any, webhook_receiver: LocalServer, tmp_path: Path
) -> None:
    farm: Farm = module_farms(workers=("host1",), lease_seconds=2, max_attempts=MAX_ATTEMPTS)
    hook = webhook_receiver.url("/hook")
    task = farm.node().create_task(make_images(tmp_path, 2) + [slow_image(tmp_path, 60)], webhook=hook)
    timeline = Timeline()
    runs: list[str] = []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        claim = wait_claim(farm, task.uuid, exclude=runs, timeout=40)
        runs.append(claim.run_id)
        assert record(farm, task.uuid)["attempt"] == str(attempt)
        wait_phase(farm, claim, task.uuid, "engine")
        kill_worker(farm, claim.worker)
        timeline.mark(f"attempt {attempt}: run {claim.run_id} on {claim.worker} killed")
        farm.start_worker(f"host{attempt + 1}")

    info = wait_status(farm, task.uuid, (30, 40, 50), timeout=40)
    timeline.mark(f"status {info['status']}")
    print(timeline)
    assert info["status"]["code"] == 30, info
    message = info["status"].get("errorMessage", "")
    assert "interrupted" in message and str(MAX_ATTEMPTS) in message, f"unclear errorMessage: {message!r}"
    assert record(farm, task.uuid)["runId"] == runs[-1], "no run beyond the allowed attempts"
    console = farm.get(f"/task/{task.uuid}/output").json()
    assert any("Giving up" in line for line in console), console[-5:]

    def delivered() -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in webhook_receiver.received if r.path == "/hook"]

    wait_until(lambda: bool(delivered()), 20, "the webhook of the failed task was never delivered")
    payload = delivered()[0]
    assert payload["uuid"] == task.uuid and payload["status"]["code"] == 30, payload
    assert "interrupted" in payload["status"].get("errorMessage", ""), payload
    assert len(delivered()) == 1
