"""Metrics, readiness and task-event logs of a real farm after known activity.

One farm (gunicorn, a Celery worker started later, Redis, JSON logs, a metrics token): /ready and /metrics
without a worker, then tasks that complete, fail, get cancelled and call a webhook nobody answers, known
upload and download bytes; the counters, histograms and gauges parsed with prometheus_client's own parser
must match exactly, and the API's and the worker's log files hold one JSON line per event, no secret.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from odm_farm.redis_server import free_port
from tests.e2e.helpers import failing_image, make_images, slow_image, wait_status
from tests.support.farm import Farm, wait_until
from tests.support.local_http import local_server, reply

METRICS_TOKEN = "metrics-secret-42"
COMPLETED, FAILED, CANCELED = 40, 30, 50


def scrape(farm: Farm, token: str | None = METRICS_TOKEN, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.get(farm.url + "/metrics", headers=headers, timeout=30, **kwargs)


def samples(farm: Farm) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = scrape(farm)
    assert response.status_code == 200, response.text
    found = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def names(found: dict[Any, float]) -> set[str]:
    return {name for name, _ in found}


def submit(farm: Farm, paths: list[str], **data: str) -> tuple[str, int]:
    files = [("images", (Path(p).name, Path(p).read_bytes())) for p in paths]
    uuid = farm.post("/task/new", files=files, data=data).json()["uuid"]
    return uuid, sum(len(f[1][1]) for f in files)


def events(log: Path) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if "event" in entry:
                found.append(entry)
    return found


def test_metrics_ready_and_event_logs_after_known_activity(farm_factory: Any, tmp_path: Path) -> None:
    farm: Farm = farm_factory(workers=0, metrics_token=METRICS_TOKEN, log_format="json", webhook_retries=1)

    # no worker: not ready, and no free-disk figure at all (0 would read as a full disk)
    ready = requests.get(farm.url + "/ready", timeout=10)
    assert ready.status_code == 503 and ready.json()["failed"] == ["workers"]
    found = samples(farm)
    assert "odm_farm_worker_free_disk_bytes" not in names(found)
    assert "odm_farm_worker_scratch_free_bytes" not in names(found)
    assert value(found, "odm_farm_queue_workers", queue="cpu") == 0

    farm.start_worker()
    wait_until(lambda: requests.get(farm.url + "/ready", timeout=10).status_code == 200, 15, "never ready")

    uploaded = 0
    completed = []
    for i in range(2):
        uuid, size = submit(farm, make_images(tmp_path / f"ok{i}", count=2, size=5000 + i))
        completed.append(uuid)
        uploaded += size
    dead_hook = f"http://127.0.0.1:{free_port()}/hook"  # nobody listens: the one delivery fails
    failing, size = submit(farm, [failing_image(tmp_path, 1)], webhook=dead_hook)
    uploaded += size
    cancelled, size = submit(farm, [slow_image(tmp_path, 60)])
    uploaded += size
    assert farm.post("/task/cancel", data={"uuid": cancelled}).json() == {"success": True}

    for uuid in completed:
        wait_status(farm, uuid, (COMPLETED,))
    wait_status(farm, failing, (FAILED,))
    downloaded = sum(len(farm.get(f"/task/{uuid}/download/all.zip").content) for uuid in completed)
    assert downloaded > 0
    wait_until(lambda: value(samples(farm), "odm_farm_webhook_failures_total") == 1, 20, "webhook never failed")

    found = samples(farm)
    assert value(found, "odm_farm_tasks_created_total") == 4
    for outcome, expected in (("completed", 2), ("failed", 1), ("cancelled", 1)):
        assert value(found, "odm_farm_tasks_ended_total", outcome=outcome) == expected
        assert value(found, "odm_farm_task_duration_seconds_count", outcome=outcome) == expected
        assert value(found, "odm_farm_task_duration_seconds_bucket", outcome=outcome, le="+Inf") == expected
        assert value(found, "odm_farm_task_duration_seconds_bucket", outcome=outcome, le="60.0") == expected
    assert 0 < value(found, "odm_farm_task_duration_seconds_sum", outcome="completed") < 60
    assert value(found, "odm_farm_upload_bytes_total") == uploaded
    assert value(found, "odm_farm_download_bytes_total") == downloaded
    assert value(found, "odm_farm_lease_takeovers_total") == 0
    assert value(found, "odm_farm_queue_depth", queue="cpu") == 0
    assert value(found, "odm_farm_queue_workers", queue="cpu") == 1
    assert value(found, "odm_farm_queue_slots", queue="cpu") == 2
    assert value(found, "odm_farm_queue_workers", queue="gpu") == 0
    assert value(found, "odm_farm_worker_scratch_free_bytes", worker="worker1") > 0
    assert value(found, "odm_farm_workers") == 1

    # Prometheus's way in: a bearer token; anything else is a 401 that says how to authenticate
    for token in (None, "wrong", farm.token):
        refused = scrape(farm, token)
        assert refused.status_code == 401, token
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert scrape(farm, None, params={"token": farm.token}).status_code == 401, "a metrics token is set"

    # one JSON line per event, with the task and the worker, in the API's and in the worker's log
    api_events, worker_events = events(farm.apis[0].log), events(farm.workers[0].log)
    created = {e["uuid"] for e in api_events if e["event"] == "task.created"}
    assert created == {*completed, failing, cancelled}
    assert any(e["event"] == "task.finished" and e["uuid"] == cancelled and e["outcome"] == "cancelled"
               for e in api_events)
    claimed = {e["uuid"]: e for e in worker_events if e["event"] == "task.claimed"}
    assert set(completed) | {failing} <= set(claimed)
    assert all(e["worker"] == "worker1" and e["run"] for e in claimed.values())
    finished = {e["uuid"]: e for e in worker_events if e["event"] == "task.finished"}
    assert {finished[u]["outcome"] for u in completed} == {"completed"}
    assert finished[failing]["outcome"] == "failed" and finished[failing]["reason"]
    stages = [e["stage"] for e in worker_events if e["event"] == "task.stage" and e["uuid"] == completed[0]]
    assert stages[:2] == ["fetching inputs", "engine"] and stages[-1] == "storing results"
    hook = [e for e in worker_events if e["event"] == "webhook.failed"]
    assert len(hook) == 1 and hook[0]["uuid"] == failing and hook[0]["url"] == dead_hook
    assert hook[0]["reason"] == "ConnectionError" and hook[0]["worker"] == "worker1", hook

    # no token in any line of any log
    for process in [*farm.apis, *farm.workers]:
        text = process.log.read_text(errors="replace")
        assert farm.token not in text and METRICS_TOKEN not in text, process.name

    # the worker leaves: not ready again, and its disk figures are gone rather than 0
    farm.workers[0].stop()
    wait_until(lambda: requests.get(farm.url + "/ready", timeout=10).status_code == 503, 15, "still ready")
    found = samples(farm)
    assert "odm_farm_worker_free_disk_bytes" not in names(found)
    assert "odm_farm_worker_scratch_free_bytes" not in names(found)
    assert value(found, "odm_farm_tasks_created_total") == 4, "counters outlive the processes"

    # an object store that cannot be written is named too (a file where the storage folder was)
    storage = Path(farm.env["ODM_FARM_STORAGE_DIR"])
    storage.rename(storage.with_name("storage-away"))
    storage.write_text("not a folder")
    ready = requests.get(farm.url + "/ready", timeout=10)
    assert ready.status_code == 503 and ready.json()["failed"] == ["store", "workers"], ready.text
    assert "not writable" in ready.json()["checks"]["store"]


def test_the_node_token_opens_metrics_when_no_metrics_token_is_set(farm: Farm) -> None:
    assert scrape(farm, farm.token).status_code == 200
    assert requests.get(farm.url + "/metrics", params={"token": farm.token}, timeout=10).status_code == 200
    refused = requests.get(farm.url + "/metrics", params={"token": "wrong"}, timeout=10)
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert requests.get(farm.url + "/health", timeout=10).json() == {"status": "ok"}


def test_plain_event_lines_by_default_without_url_credentials(farm: Farm, tmp_path: Path) -> None:
    with local_server() as server:
        server.routes["/hook"] = lambda handler: reply(handler, 200, b"ok")
        hook = server.url("/hook").replace("http://", "http://hookuser:hook-pass-77@") + "?token=hook-tok-88"
        uuid, _ = submit(farm, make_images(tmp_path, count=1), webhook=hook)
        wait_status(farm, uuid, (COMPLETED,))
        wait_until(lambda: server.received, 20, "webhook never arrived")
    worker_log = farm.workers[0].log
    wait_until(lambda: f"event=webhook.sent uuid={uuid}" in worker_log.read_text(), 10, "no webhook.sent line")
    lines = worker_log.read_text().splitlines()
    claimed = [line for line in lines if f"event=task.claimed uuid={uuid} worker=worker1 run=" in line]
    assert len(claimed) == 1 and " INFO workers.pipeline: " in claimed[0]
    assert any(f"event=task.finished uuid={uuid} worker=worker1" in line and "outcome=completed" in line
               for line in lines)
    sent = next(line for line in lines if f"event=webhook.sent uuid={uuid}" in line)
    assert f"url=http://127.0.0.1:{server.port}/hook" in sent and "hookuser" not in sent
    api_log = farm.apis[0].log.read_text()
    assert f"event=task.created uuid={uuid}" in api_log
    for text in (api_log, worker_log.read_text()):
        for secret in ("hook-pass-77", "hook-tok-88", farm.token):
            assert secret not in text
