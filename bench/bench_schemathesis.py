"""Benchmark: a schemathesis pass over every route of a live farm (the one tests/e2e/test_openapi_fuzz.py runs).

Requests generated from /swagger.json (valid and invalid, --examples per operation and mode), three in four
aimed at tasks and upload sessions that exist. Printed: operations, requests sent, failures (no 5xx, and
every answer's status, content type, headers and body as described), and how long the pass took.

    .venv/bin/python bench/bench_schemathesis.py [--examples 12] [--seed N]
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import requests
from harness import make_images, print_result, result, running_farm

from tests.e2e import test_openapi_fuzz


def run(examples: int = 12, seed: int | None = None) -> dict[str, Any]:
    test_openapi_fuzz.SEED = seed
    with running_farm(simulate_seconds=0.2) as bench:
        images = make_images(bench.tmp / "images", 3, 2000)
        tasks = [bench.run_task(images).uuid for _ in range(4)]
        sessions = []
        for _ in range(4):
            params = {"token": bench.token}
            uuid = requests.post(f"{bench.url}/task/new/init", params=params, timeout=30).json()["uuid"]
            files = [("images", ("a.jpg", b"\xff\xd8\xff\xe0" + os.urandom(2000)))]
            requests.post(f"{bench.url}/task/new/upload/{uuid}", params=params, files=files, timeout=30)
            sessions.append(uuid)
        uuids = [x for pair in zip(tasks, sessions, strict=True) for x in pair]
        outcome = test_openapi_fuzz.fuzz(bench.url, bench.token, uuids, examples)
    for failure in outcome.failures:
        print(failure, "\n")
    return result(
        "schemathesis",
        {"examples": examples, "seed": "fixed" if seed is None else seed},
        {
            "operations": outcome.operations,
            "requests": outcome.sent,
            "failures": len(outcome.failures),
            "pass_s": outcome.seconds,
        },
        targets={"failures": "== 0"},
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=12, help="examples per operation and generation mode")
    parser.add_argument("--seed", type=int, default=None, help="explore other examples than the fixed ones")
    args = parser.parse_args()
    res = run(args.examples, args.seed)
    print_result(res)
    if res["metrics"]["failures"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
