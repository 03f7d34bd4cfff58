"""Redis killed (SIGKILL) and restarted from its AOF while a real worker runs a task: no console line or
progress value is lost, none is doubled. ODM_FARM_TEST_OUTAGE_SECONDS sets the outage (default 20 s, longer than
the Redis client's own retries (~15 s), so the worker really sees errors; the issue's figure is 60 s)."""

from __future__ import annotations

import collections
import os
import signal
import time
from pathlib import Path

import redis

from odm_farm.redis_server import free_port, start_redis
from shared.taskstore import Keys
from tests.e2e.helpers import make_images, wait_status
from tests.support.farm import Farm, farm_env, wait_until
from workers.progress import ENGINE_SHARE, WEIGHTS

OUTAGE = float(os.environ.get("ODM_FARM_TEST_OUTAGE_SECONDS", "20"))
SIMULATE_STAGES = ("dataset", "split", "merge", "opensfm", "openmvs", "odm_filterpoints", "odm_meshing",
                   "mvs_texturing", "odm_georeferencing", "odm_dem", "odm_orthophoto", "odm_report",
                   "odm_postprocess")


def test_console_and_progress_survive_a_redis_outage_mid_run(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "redis"
    server = start_redis(data, port, persistent=True)
    url = f"redis://127.0.0.1:{port}/0"
    # the lease must outlive the outage, or the run is (rightly) handed to another worker when Redis returns
    env = farm_env(tmp_path / "farm", url, token="t", simulate_seconds=OUTAGE + 10, lease_seconds=OUTAGE + 30,
                   worker_ttl=OUTAGE + 30, worker_slots=1)
    farm = Farm(tmp_path / "farm", env, token="t")
    r = redis.Redis.from_url(url, decode_responses=True)
    try:
        farm.start_api()
        farm.start_worker()
        task = farm.node().create_task(make_images(tmp_path / "in", 2), name="console through an outage")
        wait_until(lambda: any("Running opensfm stage" in line
                               for line in farm.get(f"/task/{task.uuid}/output").json()), 30, "no opensfm")

        server.send_signal(signal.SIGKILL)
        server.wait(10)
        killed_at = time.monotonic()
        time.sleep(OUTAGE)
        server = start_redis(data, port, persistent=True)

        # what the engine printed during the outage lands, with the progress it shows, while the task still runs
        def printed_during_outage() -> list[str]:
            lines = farm.get(f"/task/{task.uuid}/output").json()
            done = [line.split("Finished ")[1].split()[0] for line in lines if "Finished " in line]
            return done

        wait_until(lambda: "odm_filterpoints" in printed_during_outage(), 10, "outage lines never arrived")
        info = farm.get(f"/task/{task.uuid}/info").json()
        last_done = printed_during_outage()[-1]
        assert info["status"]["code"] == 20, "the run went on through the outage"
        assert info["progress"] >= WEIGHTS[last_done] * ENGINE_SHARE - 0.01, (info["progress"], last_done)
        recovered = time.monotonic() - killed_at - OUTAGE

        info = wait_status(farm, task.uuid, (40, 30), timeout=OUTAGE + 60)
        assert info["status"]["code"] == 40, farm.logs()
        lines = farm.get(f"/task/{task.uuid}/output").json()
        stage_lines = [line.split("] ", 1)[-1].strip() for line in lines if line.rstrip().endswith(" stage")]
        expected = [f"{verb} {stage} stage" for stage in SIMULATE_STAGES for verb in ("Running", "Finished")]
        assert stage_lines == expected, stage_lines
        doubled = {line: n for line, n in collections.Counter(lines).items()
                   if n > 1 and line.strip() not in ("[INFO]    ==============", "")}
        assert not doubled, doubled
        assert float(r.hget(Keys.task(task.uuid), "progress") or 0) == 100
        print(f"outage {OUTAGE:.0f} s: outage lines visible {recovered:.1f} s after Redis returned")
    finally:
        farm.stop()
        server.terminate()
        server.wait(10)
