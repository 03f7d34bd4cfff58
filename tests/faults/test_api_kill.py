"""The API killed (kill -9 of gunicorn and its workers) mid-upload and restarted on the same port.

PyODM's own retries carry the upload through: the task gets exactly the images sent, each once, with the
bytes the client sent.
"""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

from shared.settings import Settings
from shared.storage import make_store
from tests.e2e.helpers import make_images, wait_status
from tests.support.farm import Farm, wait_until
from tests.support.faults import Timeline, signal_tree, storage_dir, wait_gone


def test_api_killed_mid_upload(module_farms: Any, tmp_path: Path) -> None:
    farm: Farm = module_farms(workers=("w1",))
    count = 60
    images = make_images(tmp_path, count, size=1_000_000)
    timeline = Timeline()
    result: dict[str, Any] = {}

    def upload() -> None:
        try:
            result["task"] = farm.node().create_task(
                images, parallel_uploads=4, max_retries=10, retry_timeout=1
            )
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    uploader = threading.Thread(target=upload, daemon=True)
    uploader.start()
    r = farm.redis

    def uploaded() -> int:
        return max([r.hlen(key) for key in r.scan_iter(match="odmfarm:upload:*:files")] or [0])

    wait_until(lambda: uploaded() >= 8, 30, "the upload never started")
    api = farm.apis[0]
    pids = signal_tree(api.proc.pid, signal.SIGKILL)
    timeline.mark(f"API killed after {uploaded()} of {count} files (pids {pids})")
    api.proc.wait(10)
    assert wait_gone(pids, 5) == []
    time.sleep(0.5)
    farm.start_api(farm.ports[0])
    timeline.mark("API back on the same port")
    uploader.join(180)
    timeline.mark("create_task returned")
    print(timeline)
    assert "error" not in result, f"PyODM's upload failed through the API restart: {result.get('error')!r}"
    task = result["task"]
    info = wait_status(farm, task.uuid, (30, 40, 50), timeout=60)
    assert info["status"]["code"] == 40, info
    assert info["imagesCount"] == count

    names = sorted(Path(p).name for p in images)
    assert sorted(json.loads(r.hget(f"odmfarm:task:{task.uuid}", "inputs"))) == names
    store = make_store(Settings.from_env(farm.env))
    keys = sorted(key.rsplit("/", 1)[-1] for key, _ in store.list(f"{task.uuid}/inputs/"))
    assert keys == names, "stored inputs are not exactly the uploaded images"
    for path in images:
        stored = storage_dir(farm) / task.uuid / "inputs" / Path(path).name
        assert (
            hashlib.sha256(stored.read_bytes()).digest() == hashlib.sha256(Path(path).read_bytes()).digest()
        )
    partial = [p.name for p in (storage_dir(farm) / task.uuid / "inputs").iterdir() if p.name not in names]
    print(f"partial uploads left by the killed API: {partial}")
