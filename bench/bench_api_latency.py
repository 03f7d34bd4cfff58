"""Benchmark: latency and throughput of GET /info and GET /task/{uuid}/info under 32 connections.

The farm runs as `odm-farm up` runs it (gunicorn gthread, default workers and threads, a token, one
simulate worker). Load comes from wrk (C, epoll: not the bottleneck) when it is on PATH, else from a
Python thread-per-connection keep-alive client (slower: then the figures are a lower bound). The
single-connection median of /info is measured with 2000 sequential keep-alive requests.Session calls
(which spend about 1 ms per call in requests itself), with http.client, and with wrk -c1: the last two
are close to what the server takes.

    .venv/bin/python bench/bench_api_latency.py [--connections 32] [--duration 10] [--sequential 2000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from harness import (
    BenchError,
    make_images,
    median,
    percentile,
    print_result,
    result,
    running_farm,
)

# wrk reports latency in microseconds; this prints its summary as one JSON line
WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"socket_errors":%d,"timeouts":%d,"non2xx":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
"""


def wrk_load(
    url: str, connections: int, duration: float, threads: int = 2, allow_timeouts: bool = False
) -> dict[str, float]:
    """p50/p90/p99 in ms and requests/s from wrk, which must be on PATH. With allow_timeouts, requests
    not answered within wrk's 10 s are counted (`timeouts`) instead of failing the run."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    try:
        command = [
            "wrk",
            f"-t{min(threads, connections)}",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "10s",
            "-s",
            script.name,
            url,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, check=False)
    finally:
        Path(script.name).unlink()
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    raw = json.loads(line.removeprefix("WRKJSON "))
    timeouts = raw.pop("timeouts")
    if allow_timeouts:
        raw["socket_errors"] -= timeouts
    if raw["socket_errors"] or raw["non2xx"]:
        raise BenchError(f"wrk saw errors on {url}: {raw}")
    return {
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "requests_per_s": raw["requests"] / (raw["duration_us"] / 1e6),
        "requests": raw["requests"],
        "timeouts": timeouts,
    }


def python_load(url: str, connections: int, duration: float) -> dict[str, float]:
    """The same figures from one keep-alive http.client connection per thread (GIL-bound: a lower bound)."""
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors: list[str] = []
    stop_at = time.perf_counter() + duration

    def client(slot: list[float]) -> None:
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
        try:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                slot.append(time.perf_counter() - started)
                if response.status != 200:
                    errors.append(str(response.status))
                    return
        except OSError as exc:
            errors.append(repr(exc))
        finally:
            conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(slot,)) for slot in latencies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise BenchError(f"load on {url} failed: {errors[:3]}")
    flat = [x * 1000 for slot in latencies for x in slot]
    return {
        "p50_ms": percentile(flat, 50),
        "p90_ms": percentile(flat, 90),
        "p99_ms": percentile(flat, 99),
        "max_ms": max(flat),
        "requests_per_s": len(flat) / elapsed,
        "requests": len(flat),
    }


def sequential(url: str, count: int) -> dict[str, float]:
    """count requests one after the other on one keep-alive requests.Session: median/p90/p99 in ms."""
    session = requests.Session()
    for _ in range(20):
        session.get(url, timeout=10).raise_for_status()
    times = []
    for _ in range(count):
        started = time.perf_counter()
        response = session.get(url, timeout=10)
        response.content  # noqa: B018 - the body is part of the request's time
        times.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise BenchError(f"{url} answered {response.status_code}")
    session.close()
    return {"p50_ms": median(times), "p90_ms": percentile(times, 90), "p99_ms": percentile(times, 99)}


def sequential_raw(url: str, count: int) -> dict[str, float]:
    """The same with http.client on one keep-alive connection: less client time than requests."""
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    times = []
    try:
        for n in range(count + 20):
            started = time.perf_counter()
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            if n >= 20:  # the first requests warm the connection up
                times.append((time.perf_counter() - started) * 1000)
            if response.status != 200:
                raise BenchError(f"{url} answered {response.status}")
    finally:
        conn.close()
    return {"p50_ms": median(times), "p90_ms": percentile(times, 90), "p99_ms": percentile(times, 99)}


def check_answer(url: str, key: str) -> None:
    body = requests.get(url, timeout=10).json()
    if "error" in body or key not in body:
        raise BenchError(f"{url} did not answer as expected: {body}")


def run(
    connections: int = 32,
    duration: float = 10.0,
    sequential_count: int = 2000,
    warmup: float = 2.0,
    force_python: bool = False,
) -> dict[str, Any]:
    use_wrk = shutil.which("wrk") is not None and not force_python
    load = wrk_load if use_wrk else python_load
    metrics: dict[str, Any] = {}
    notes = [
        f"load generator: {'wrk' if use_wrk else 'Python threads + http.client (GIL-bound: a lower bound)'}"
    ]
    with running_farm(simulate_seconds=0) as farm:
        task = farm.run_task(make_images(farm.tmp / "images", 3, 20_000))
        token = f"token={farm.token}"
        urls = {"info": f"{farm.url}/info?{token}", "task_info": f"{farm.url}/task/{task.uuid}/info?{token}"}
        check_answer(urls["info"], "maxParallelTasks")
        check_answer(urls["task_info"], "status")
        single = sequential(urls["info"], sequential_count)
        metrics.update({f"info_1conn_requests_{k}": v for k, v in single.items()})
        metrics["info_1conn_httpclient_p50_ms"] = sequential_raw(urls["info"], sequential_count)["p50_ms"]
        if use_wrk:
            one = wrk_load(urls["info"], 1, min(duration, 5.0), threads=1)
            metrics.update(
                {
                    "info_1conn_wrk_p50_ms": one["p50_ms"],
                    "info_1conn_wrk_requests_per_s": one["requests_per_s"],
                }
            )
        for name, url in urls.items():
            load(url, connections, warmup)
            figures = load(url, connections, duration)
            metrics.update(
                {
                    f"{name}_c{connections}_{k}": v
                    for k, v in figures.items()
                    if k not in ("requests", "timeouts")
                }
            )
    return result(
        "api_latency",
        {
            "connections": connections,
            "duration_s": duration,
            "sequential": sequential_count,
            "api": "gunicorn gthread, default workers/threads, token",
        },
        metrics,
        targets={"info_1conn_requests_p50_ms": "< 2 ms (issue)"},
        notes=notes,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per endpoint")
    parser.add_argument("--sequential", type=int, default=2000, help="sequential /info requests")
    parser.add_argument("--python-load", action="store_true", help="use the Python load generator, not wrk")
    args = parser.parse_args()
    print_result(run(args.connections, args.duration, args.sequential, force_python=args.python_load))


if __name__ == "__main__":
    main()
