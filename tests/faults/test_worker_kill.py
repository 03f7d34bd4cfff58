"""kill -9 of a worker host (Celery main process and its engines) at random moments: nothing is lost.

Each task is killed during one step of its first run (fetching inputs, the engine, zipping, storing), with a
seeded random delay inside the engine step. The task must end COMPLETED on the surviving worker, no two
runs of it may be alive at once, a polling client must never see progress go down, and all.zip is valid.
"""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path
from typing import Any

from tests.e2e.helpers import make_images, wait_status
from tests.support.farm import Farm
from tests.support.faults import (
    ProgressRecorder,
    RunMonitor,
    Timeline,
    kill_worker,
    phase,
    seeded_rng,
    wait_claim,
    wait_gone,
    wait_phase,
)

TARGETS = ("fetch", "engine", "zip", "store")


def test_worker_killed_at_random_moments_loses_nothing(module_farms: Any, tmp_path: Path) -> None:
    farm: Farm = module_farms()
    rng = seeded_rng("worker kill")
    node = farm.node()
    timeline = Timeline()
    report: list[dict[str, Any]] = []
    takeovers_before = _takeovers(farm)
    with RunMonitor(farm) as runs, ProgressRecorder(farm) as client:
        for i, target in enumerate(TARGETS):
            for attempt in range(3):  # zip and store last milliseconds: a kill can come just too late
                entry = _kill_during(
                    farm, node, rng, target, tmp_path / f"t{i}-{attempt}", runs, client, timeline
                )
                if entry["landed"] != "finished":
                    break
            report.append(entry)
        time.sleep(0.3)  # a last sample of every task's final state
    print(timeline)
    for entry in report:
        print({k: v for k, v in entry.items() if k != "info"})

    landed = [e["landed"] for e in report]
    assert "finished" not in landed, f"a kill kept landing after its task had finished: {landed}"
    assert _takeovers(farm) - takeovers_before == len(report), "/metrics counts each lease takeover once"
    for entry in report:
        uuid = entry["uuid"]
        info = entry["info"]
        assert entry["status"] == 40, (
            f"{uuid} ended {info['status']} after a kill in {entry['landed']}\n"
            f"{farm.get(f'/task/{uuid}/output').json()}"
        )
        assert entry["survivor"] != entry["killed"]
        assert farm.redis.hget(f"odmfarm:task:{uuid}", "worker") == entry["survivor"], (
            "the task must complete on the surviving worker"
        )
        assert info["imagesCount"] == 12
        logs = "".join(p.log.read_text(errors="replace") for p in [*farm.apis, *farm.workers])
        assert f"event=task.handed_over uuid={uuid} worker={entry['killed']}" in logs, (
            "the takeover is logged"
        )
        drops = client.backwards(uuid)
        assert drops == [], f"{uuid}: progress went backwards for the client: {drops}"
        spans = runs.runs(uuid)
        assert len(spans) == 2, f"{uuid}: expected the killed run and one more, saw {spans}"
        all_zip = farm.get(f"/task/{uuid}/download/all.zip")
        assert all_zip.status_code == 200
        with zipfile.ZipFile(io.BytesIO(all_zip.content)) as zf:
            assert zf.testzip() is None
            names = set(zf.namelist())
        assert {"odm_orthophoto/odm_orthophoto.tif", "odm_dem/dsm.tif", "task_output.txt"} <= names, names
        console = farm.get(f"/task/{uuid}/output").json()
        starts = [line for line in console if "started processing" in line]
        assert len(starts) == 2 and "(attempt 2)" in starts[1], starts
    assert runs.overlaps == [], f"runs of one task alive at once: {runs.overlaps[:5]}"
    assert client.errors == [], client.errors


def _kill_during(
    farm: Farm,
    node: Any,
    rng: Any,
    target: str,
    folder: Path,
    runs: RunMonitor,
    client: ProgressRecorder,
    timeline: Timeline,
) -> dict[str, Any]:
    # enough input bytes that fetching them is a step one can land in
    task = node.create_task(make_images(folder, 12, size=400_000), {"dsm": True})
    runs.watch(task.uuid)
    client.watch(task.uuid)
    first = wait_claim(farm, task.uuid)
    reached = wait_phase(farm, first, task.uuid, target)
    if target == "engine":
        time.sleep(rng.uniform(0.0, 1.2))
    landed = phase(farm, first, task.uuid)
    runs.sample()  # the run about to die is recorded, however loaded the machine
    killed_at = time.monotonic()
    _, pids = kill_worker(farm, first.worker)
    assert wait_gone(pids, 5) == [], f"processes of {first.worker} survived kill -9"
    status, attempt = farm.redis.hmget(f"odmfarm:task:{task.uuid}", "status", "attempt")
    if status == "40" and attempt == "1":
        landed = "finished"  # it completed between the look and the kill
    timeline.mark(
        f"{task.uuid}: kill {first.worker} aiming at {target} (reached {reached}, landed in {landed})"
    )
    entry: dict[str, Any] = {"uuid": task.uuid, "target": target, "landed": landed, "killed": first.worker}
    if landed != "finished":
        second = wait_claim(farm, task.uuid, exclude=[first.run_id], timeout=30)
        entry["takeover_s"] = round(second.at - killed_at, 2)
        entry["survivor"] = second.worker
        runs.sample()  # a resumed run can be short
        timeline.mark(f"{task.uuid}: run {second.run_id} claimed by {second.worker}")
        info = wait_status(farm, task.uuid, (30, 40, 50), timeout=60)
        entry["status"] = info["status"]["code"]
        entry["info"] = info
    farm.start_worker(first.worker)  # the host comes back (cleans what its previous life left)
    return entry


def _takeovers(farm: Farm) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = farm.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "odm_farm_lease_takeovers_total":
                return float(sample.value)
    raise AssertionError(f"no lease takeover counter in /metrics:\n{text}")
