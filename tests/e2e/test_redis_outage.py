"""Redis SIGKILLed for 25 s and restarted from its AOF: no NodeODM route answers 5xx, nothing written is lost.

A request that meets the outage is held while Redis is down; if Redis is back within ~20 s it is answered
as usual, otherwise the connection is dropped without an answer (clients retry that, but fail a task on a
5xx). Uploads in flight when Redis dies are either recorded once Redis is back or dropped, never half-done.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import requests

from odm_farm.redis_server import free_port, start_redis
from tests.e2e.helpers import wait_status
from tests.support.farm import Farm, farm_env

TOKEN = "outage-token"
OUTAGE_SECONDS = 25.0
HOLD_SECONDS = 20.0


def jpeg(size: int = 3000) -> bytes:
    return b"\xff\xd8\xff\xe0" + os.urandom(size)


@dataclass
class Outcome:
    route: str
    elapsed: float
    status: int | None = None  # None: no answer
    body: Any = None
    error: str = ""

    @property
    def dropped(self) -> bool:
        return self.status is None and "Timeout" not in self.error


class SlowBody:
    """A request body sent in pieces over `seconds`, with a Content-Length (as a slow client uploads)."""

    def __init__(self, data: bytes, seconds: float, pieces: int = 20) -> None:
        self.data, self.seconds, self.pieces = data, seconds, pieces

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self) -> Iterator[bytes]:
        step = -(-len(self.data) // self.pieces)
        for i in range(0, len(self.data), step):
            yield self.data[i : i + step]
            time.sleep(self.seconds / self.pieces)


def multipart(files: list[tuple[str, bytes]], **fields: str) -> tuple[bytes, str]:
    parts = [("images", (name, data, "image/jpeg")) for name, data in files]
    prepared = requests.Request("POST", "http://x/", files=parts or None, data=fields or None).prepare()
    return bytes(prepared.body or b""), prepared.headers["Content-Type"]


def call(route: str, method: str, url: str, **kwargs: Any) -> Outcome:
    start = time.monotonic()
    params = {"token": TOKEN, **kwargs.pop("params", {})}
    try:
        response = requests.request(method, url, params=params, timeout=30, **kwargs)
    except requests.RequestException as exc:
        return Outcome(route, time.monotonic() - start, error=f"{type(exc).__name__}: {exc}")
    try:
        body: Any = response.json()
    except ValueError:
        body = response.content[:200]
    return Outcome(route, time.monotonic() - start, response.status_code, body)


def routes(farm: Farm, t: dict[str, str], tag: str) -> dict[str, Callable[[], Outcome]]:
    """One request per NodeODM route, aimed at the tasks and sessions prepared before the outage."""
    url = farm.url
    file = [(f"{tag}.jpg", jpeg())]
    return {
        "info": lambda: call("info", "GET", f"{url}/info"),
        "options": lambda: call("options", "GET", f"{url}/options"),
        "task list": lambda: call("task list", "GET", f"{url}/task/list"),
        "task info": lambda: call(
            "task info", "GET", f"{url}/task/{t['done']}/info", params={"with_output": -2}
        ),
        "output": lambda: call("output", "GET", f"{url}/task/{t['done']}/output"),
        "download": lambda: call("download", "GET", f"{url}/task/{t['done']}/download/all.zip"),
        "init": lambda: call("init", "POST", f"{url}/task/new/init", data={"name": f"init {tag}"}),
        "upload": lambda: call(
            "upload", "POST", f"{url}/task/new/upload/{t['session']}", files=[("images", file[0])]
        ),
        "commit": lambda: call("commit", "POST", f"{url}/task/new/commit/{t['to_commit']}"),
        "new": lambda: call(
            "new", "POST", f"{url}/task/new", data={"name": f"new {tag}"}, files=[("images", file[0])]
        ),
        "cancel": lambda: call("cancel", "POST", f"{url}/task/cancel", data={"uuid": t["to_cancel"]}),
        "restart": lambda: call("restart", "POST", f"{url}/task/restart", data={"uuid": t["to_restart"]}),
        "remove": lambda: call("remove", "POST", f"{url}/task/remove", data={"uuid": t["to_remove"]}),
    }


def test_nodeodm_routes_hold_then_drop_and_never_answer_5xx_while_redis_restarts(tmp_path: Path) -> None:
    port = free_port()
    data_dir = tmp_path / "redis"
    server = start_redis(data_dir, port, persistent=True)
    root = tmp_path / "farm"
    env = farm_env(root, f"redis://127.0.0.1:{port}/0", token=TOKEN, api_threads=24, simulate_seconds=0.3)
    farm = Farm(root, env, token=TOKEN)
    pool = ThreadPoolExecutor(40)
    try:
        farm.start_api()
        farm.start_worker()
        node = farm.node()
        images = [str(p) for p in _write_images(tmp_path / "img", 2)]
        t: dict[str, str] = {}
        for name in ("done", "to_cancel", "to_restart", "to_remove"):
            t[name] = node.create_task(images, name=name).uuid
        for name in ("done", "to_cancel", "to_restart", "to_remove"):
            wait_status(farm, t[name], (40,))
        for name in ("session", "to_commit", "in_flight_kept", "in_flight_dropped"):
            t[name] = farm.post("/task/new/init", data={"name": name}).json()["uuid"]
            assert farm.post(
                f"/task/new/upload/{t[name]}", files=[("images", ("first.jpg", jpeg()))]
            ).json() == {"success": True}
        before = {
            "list": farm.get("/task/list").json(),
            "info": farm.get(f"/task/{t['done']}/info").json(),
            "output": farm.get(f"/task/{t['done']}/output").json(),
            "zip": farm.get(f"/task/{t['done']}/download/all.zip").content,
        }
        # uploads whose body is still arriving when Redis dies: one ends well inside the hold, one ends
        # right after the kill (its hold runs out before Redis is back)
        kept_body, kept_type = multipart([("slow-kept.jpg", jpeg(200_000))])
        dropped_body, dropped_type = multipart([("slow-dropped.jpg", jpeg(200_000))])
        time.sleep(1.5)  # appendfsync everysec: what was answered before this is on disk

        kept = pool.submit(
            call,
            "in-flight kept",
            "POST",
            f"{farm.url}/task/new/upload/{t['in_flight_kept']}",
            data=SlowBody(kept_body, 14),
            headers={"Content-Type": kept_type},
        )
        dropped = pool.submit(
            call,
            "in-flight dropped",
            "POST",
            f"{farm.url}/task/new/upload/{t['in_flight_dropped']}",
            data=SlowBody(dropped_body, 2),
            headers={"Content-Type": dropped_type},
        )
        time.sleep(1.0)
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        killed = time.monotonic()

        time.sleep(0.5)
        wave1 = [pool.submit(fn) for fn in routes(farm, t, "early").values()]  # outlive the hold: dropped
        _sleep_until(killed + 15)
        wave2 = [pool.submit(fn) for fn in routes(farm, t, "late").values()]  # answered once Redis is back
        _sleep_until(killed + OUTAGE_SECONDS)
        server = start_redis(data_dir, port, persistent=True)
        restarted = time.monotonic()

        early = [f.result(60) for f in wave1]
        late = [f.result(60) for f in wave2]
        slow_kept, slow_dropped = kept.result(60), dropped.result(60)
        recovered = time.monotonic() - restarted

        everything = [*early, *late, slow_kept, slow_dropped]
        assert not [o for o in everything if o.status is not None and o.status >= 500], everything
        assert all(o.dropped for o in early), [o for o in early if not o.dropped]
        assert all(HOLD_SECONDS - 1 < o.elapsed < 29 for o in early), [(o.route, o.elapsed) for o in early]
        assert all(o.status == 200 for o in late), [o for o in late if o.status != 200]
        assert recovered < 5, f"held requests answered {recovered:.1f} s after Redis came back"
        answers = {o.route: o.body for o in late}
        assert answers["download"] == before["zip"][:200]
        assert not [r for r, body in answers.items() if isinstance(body, dict) and "error" in body], answers
        assert (
            answers["upload"]
            == answers["cancel"]
            == answers["restart"]
            == answers["remove"]
            == {"success": True}
        )
        assert answers["commit"] == {"uuid": t["to_commit"]}
        assert slow_kept.status == 200 and slow_kept.body == {"success": True}, slow_kept
        assert slow_dropped.dropped, slow_dropped

        # everything written before the kill is there, and each late command did its work exactly once
        listed = [x["uuid"] for x in farm.get("/task/list").json()]
        assert [u for u in listed if u != t["to_remove"]][: len(before["list"]) - 1] == [
            x["uuid"] for x in before["list"] if x["uuid"] != t["to_remove"]
        ]
        assert (
            t["to_remove"] not in listed
            and "not found" in farm.get(f"/task/{t['to_remove']}/info").json()["error"]
        )
        assert farm.get(f"/task/{t['done']}/info").json() == before["info"]
        assert farm.get(f"/task/{t['done']}/output").json() == before["output"]
        assert farm.get(f"/task/{t['done']}/download/all.zip").content == before["zip"]
        assert farm.get(f"/task/{t['to_restart']}/info").json()["status"]["code"] in (10, 20)
        assert answers["new"]["uuid"] in listed and answers["commit"]["uuid"] in listed
        assert farm.get(f"/task/{t['to_commit']}/info").json()["imagesCount"] == 1
        r = redis.Redis(port=port, decode_responses=True)
        assert sorted(r.hkeys(f"odmfarm:upload:{t['session']}:files")) == ["first.jpg", "late.jpg"]
        assert sorted(r.hkeys(f"odmfarm:upload:{t['in_flight_kept']}:files")) == [
            "first.jpg",
            "slow-kept.jpg",
        ]
        assert r.hkeys(f"odmfarm:upload:{t['in_flight_dropped']}:files") == ["first.jpg"]
        assert r.exists(f"odmfarm:upload:{answers['init']['uuid']}")
        # the dropped upload is simply sent again, as clients do after a dropped connection
        retry = call(
            "retry",
            "POST",
            f"{farm.url}/task/new/upload/{t['in_flight_dropped']}",
            data=dropped_body,
            headers={"Content-Type": dropped_type},
        )
        assert retry.body == {"success": True}
        for name in ("in_flight_kept", "in_flight_dropped"):
            assert farm.post(f"/task/new/commit/{t[name]}").json() == {"uuid": t[name]}
            assert farm.get(f"/task/{t[name]}/info").json()["imagesCount"] == 2

        log = "\n".join(p.log.read_text(errors="replace") for p in farm.apis)
        assert "Traceback" not in log and "Error handling request" not in log, log[-3000:]
        assert all(p.alive() for p in farm.apis)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        farm.stop()
        if server.poll() is None:
            server.terminate()
            server.wait(10)


def _write_images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img{i}.jpg" for i in range(count)]
    for p in paths:
        p.write_bytes(jpeg())
    return paths


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))
