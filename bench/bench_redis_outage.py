"""Benchmark: NodeODM clients hammering every route while Redis is SIGKILLed and restarted from its AOF.

A farm runs as `odm-farm up` runs it (Redis with AOF, gunicorn gthread with default workers and threads,
a token, one simulate worker). Client threads loop over every NodeODM route (info, options, task list,
task info, output, download, init, upload, commit, new, cancel, restart, remove) while redis-server is
killed with SIGKILL and, after --outage seconds, restarted on the same AOF. Printed: requests that met the outage
(in flight at the kill or sent while Redis was down), how they ended (answered 2xx/4xx, answered 5xx — must be 0 —, dropped connection, client
timeout), how long held requests waited, and the time to recover: from Redis accepting connections again
until every held request got its answer, and until a fresh /info answered.

    .venv/bin/python bench/bench_redis_outage.py [--outage 30] [--clients 12] [--verbose]
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil
import requests
from harness import BenchError, make_images, percentile, print_result, result, running_farm

from odm_farm.redis_server import start_redis


@dataclass
class Sent:
    route: str
    start: float
    end: float
    status: int | None  # None: no answer
    error: str = ""


def jpeg() -> bytes:
    return b"\xff\xd8\xff\xe0" + os.urandom(3000)


def redis_process(port: int) -> psutil.Process:
    """The redis-server the harness started for this farm (a child of this process, found by its port)."""
    for child in psutil.Process().children(recursive=True):
        try:
            if "redis-server" in child.name() and str(port) in " ".join(child.cmdline()):
                return child
        except psutil.NoSuchProcess:
            continue
    raise BenchError(f"no redis-server on port {port} among this process's children")


def run(outage: float = 30.0, clients: int = 12, verbose: bool = False) -> dict[str, Any]:
    with running_farm(simulate_seconds=0.2) as bench:
        url, token = bench.url, bench.token
        port = int(bench.env["ODM_FARM_REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
        node = bench.node()
        images = make_images(bench.tmp / "images", 2, 20_000)
        done = bench.run_task(images).uuid
        targets = [node.create_task(images).uuid for _ in range(3 * clients)]
        sessions = []
        for _ in range(4 * clients):
            uuid = requests.post(f"{url}/task/new/init", params={"token": token}, timeout=30).json()["uuid"]
            requests.post(
                f"{url}/task/new/upload/{uuid}",
                params={"token": token},
                timeout=30,
                files=[("images", ("a.jpg", jpeg()))],
            )
            sessions.append(uuid)
        upload_to = sessions.pop()
        commit_ids, task_ids = iter(sessions), itertools.cycle(targets)
        pick = threading.Lock()

        def nxt(it: Any) -> str:
            with pick:
                return str(next(it, sessions[0]))

        p = {"token": token}
        routes: dict[str, Callable[[], requests.Response]] = {
            "info": lambda: requests.get(f"{url}/info", params=p, timeout=30),
            "options": lambda: requests.get(f"{url}/options", params=p, timeout=30),
            "task list": lambda: requests.get(f"{url}/task/list", params=p, timeout=30),
            "task info": lambda: requests.get(f"{url}/task/{done}/info", params=p, timeout=30),
            "output": lambda: requests.get(f"{url}/task/{done}/output", params=p, timeout=30),
            "download": lambda: requests.get(f"{url}/task/{done}/download/all.zip", params=p, timeout=30),
            "init": lambda: requests.post(f"{url}/task/new/init", params=p, timeout=30),
            "upload": lambda: requests.post(
                f"{url}/task/new/upload/{upload_to}",
                params=p,
                timeout=30,
                files=[("images", ("b.jpg", jpeg()))],
            ),
            "commit": lambda: requests.post(f"{url}/task/new/commit/{nxt(commit_ids)}", params=p, timeout=30),
            "new": lambda: requests.post(
                f"{url}/task/new", params=p, timeout=30, files=[("images", ("c.jpg", jpeg()))]
            ),
            "cancel": lambda: requests.post(
                f"{url}/task/cancel", params=p, timeout=30, data={"uuid": nxt(task_ids)}
            ),
            "restart": lambda: requests.post(
                f"{url}/task/restart", params=p, timeout=30, data={"uuid": nxt(task_ids)}
            ),
            "remove": lambda: requests.post(
                f"{url}/task/remove", params=p, timeout=30, data={"uuid": nxt(task_ids)}
            ),
        }
        log: list[Sent] = []
        stop = threading.Event()

        def client(offset: int) -> None:
            names = list(routes)
            for i in itertools.count(offset):
                if stop.is_set():
                    return
                name = names[i % len(names)]
                start = time.monotonic()
                try:
                    status, error = routes[name]().status_code, ""
                except requests.Timeout as exc:
                    status, error = None, f"timeout: {exc}"
                except requests.RequestException as exc:
                    status, error = None, f"dropped: {type(exc).__name__}"
                log.append(Sent(name, start, time.monotonic(), status, error))
                if status is None:
                    time.sleep(0.2)  # a client pauses a little before trying again

        time.sleep(1.5)  # appendfsync everysec
        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
        for t in threads:
            t.start()
        time.sleep(2)
        victim = redis_process(port)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        killed = time.monotonic()
        time.sleep(outage)
        server = start_redis(bench.tmp / "redis", port, persistent=True)
        try:
            back = time.monotonic()
            while True:  # a fresh request, as a client polling after the outage
                try:
                    if requests.get(f"{url}/info", params=p, timeout=30).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.05)
            fresh_ok = time.monotonic() - back
            time.sleep(3)
            stop.set()
            for t in threads:
                t.join(40)
        finally:
            server.terminate()
            server.wait(10)

    # every request that was waiting on Redis while it was down, whether sent before or during the outage
    during = [s for s in log if s.start < back and s.end > killed]
    held_at_restart = [s for s in log if s.start < back < s.end]
    answered_late = [s for s in held_at_restart if s.status is not None]
    waits = [s.end - s.start for s in during if s.status is not None]
    if verbose:
        for s in sorted(during, key=lambda s: s.start):
            print(f"   {s.route:10} {s.start - killed:7.2f} {s.end - killed:7.2f} {s.status} {s.error[:60]}")
    metrics = {
        "outage_s": outage,
        "requests_during_outage": len(during),
        "sent_after_kill": sum(1 for s in during if s.start >= killed),
        "answered_2xx": sum(1 for s in during if s.status is not None and s.status < 300),
        "answered_4xx": sum(1 for s in during if s.status is not None and 400 <= s.status < 500),
        "answered_5xx": sum(1 for s in during if s.status is not None and s.status >= 500),
        "dropped": sum(1 for s in during if s.error.startswith("dropped")),
        "client_timeouts": sum(1 for s in during if s.error.startswith("timeout")),
        "dropped_after_s_p50": percentile(
            [s.end - s.start for s in during if s.error.startswith("dropped")] or [0.0], 50
        ),
        "held_then_answered": len(answered_late),
        "held_wait_max_s": max(waits, default=0.0),
        "recover_held_answered_s": max((s.end for s in answered_late), default=back) - back,
        "recover_fresh_info_s": fresh_ok,
        "answered_5xx_total": sum(1 for s in log if s.status is not None and s.status >= 500),
    }
    return result(
        "redis_outage",
        {"outage_s": outage, "clients": clients, "routes": len(routes)},
        metrics,
        targets={"answered_5xx_total": "== 0"},
        notes=[
            "a held request is answered when Redis is back within 20 s of its first failure, else dropped"
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--outage", type=float, default=30.0, help="seconds Redis stays down")
    parser.add_argument("--clients", type=int, default=12, help="client threads looping over the routes")
    parser.add_argument("--verbose", action="store_true", help="print every request that met the outage")
    args = parser.parse_args()
    res = run(args.outage, args.clients, args.verbose)
    print_result(res)
    if res["metrics"]["answered_5xx_total"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
