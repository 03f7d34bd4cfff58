"""Post-processing tools (pdal, untwine) are stopped like the engine: a cancel through the API kills their whole
process tree within 2 s."""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from tests.e2e.helpers import make_images, wait_status
from tests.support.farm import wait_until

# A tool that never ends on its own, with a child of its own, and says where it is.
SLOW_TOOL = f"""#!{sys.executable}
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(os.environ["FAKE_TOOL_PIDS"], "a") as f:
    f.write(f"{{os.getpid()}} {{child.pid}}\\n")
time.sleep(600)
"""


def slow_tools(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("pdal", "untwine"):
        path = folder / name
        path.write_text(SLOW_TOOL)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return folder


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_cancel_stops_post_processing_within_two_seconds(farm_factory: Any, tmp_path: Path) -> None:
    pids_file = tmp_path / "tool-pids"
    tools = slow_tools(tmp_path / "bin")
    farm = farm_factory(workers=0)
    farm.start_worker(PATH=f"{tools}{os.pathsep}{os.environ['PATH']}", FAKE_TOOL_PIDS=str(pids_file))
    # without pc-ept the engine writes no EPT tiles, so the farm builds them itself with untwine
    task = farm.node().create_task(make_images(tmp_path / "in", 2), {"pc-ept": False})
    wait_until(lambda: pids_file.exists() and pids_file.read_text().strip(), 60,
               f"post-processing never started:\n{farm.logs()}")
    pids = [int(p) for p in pids_file.read_text().split()]
    assert all(alive(pid) for pid in pids)
    assert farm.get(f"/task/{task.uuid}/info").json()["status"]["code"] == 20

    started = time.monotonic()
    assert farm.post("/task/cancel", data={"uuid": task.uuid}).json() == {"success": True}
    wait_until(lambda: not any(alive(pid) for pid in pids), 5, f"tools still running: {pids}")
    stopped_in = time.monotonic() - started
    assert stopped_in < 2.0, stopped_in
    assert wait_status(farm, task.uuid, (50,))["status"]["code"] == 50
    lines = farm.get(f"/task/{task.uuid}/output").json()
    assert any("Post-processing: Building EPT" in line for line in lines), lines


def test_max_runtime_stops_post_processing(farm_factory: Any, tmp_path: Path) -> None:
    pids_file = tmp_path / "tool-pids"
    tools = slow_tools(tmp_path / "bin")
    farm = farm_factory(workers=0, simulate_seconds=0.5, max_runtime=6)
    farm.start_worker(PATH=f"{tools}{os.pathsep}{os.environ['PATH']}", FAKE_TOOL_PIDS=str(pids_file))
    task = farm.node().create_task(make_images(tmp_path / "in", 2), {"pc-ept": False})
    wait_until(lambda: pids_file.exists() and pids_file.read_text().strip(), 30,
               f"post-processing never started:\n{farm.logs()}")
    pids = [int(p) for p in pids_file.read_text().split()]
    info = wait_status(farm, task.uuid, (50, 40, 30), timeout=20)
    assert info["status"]["code"] == 50, info
    wait_until(lambda: not any(alive(pid) for pid in pids), 3, f"tools outlived the maximum runtime: {pids}")
