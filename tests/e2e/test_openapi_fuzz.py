"""A bounded schemathesis pass over every route of a live farm (gunicorn, worker, Redis, a token).

Requests generated from /swagger.json, valid and invalid, must never get a 5xx, and every answer must have
a status, content type, headers and body the description allows (for NodeODM routes: the result or the
error form at HTTP 200). Prints how many requests were sent and every failure found.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup

from tests.e2e.helpers import wait_status
from tests.support.farm import Farm

# per operation and mode: the whole pass stays well under a minute on a busy 2-core machine
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or 12)
# the same examples on every run; FUZZ_SEED=<n> explores others (what found the defects fixed so far)
SEED = int(os.environ["FUZZ_SEED"]) if os.environ.get("FUZZ_SEED") else None
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
]


@dataclass
class Pass:
    sent: int = 0
    operations: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


def fuzz(url: str, token: str, uuids: list[str], examples: int = EXAMPLES) -> Pass:
    """Run the pass against a farm at `url`; failures are collected, not raised, so that all are reported.

    Three requests in four name one of `uuids` (tasks and upload sessions that exist) instead of a generated
    uuid, so that the routes get past "not found" and the fuzzed fields reach the code behind.
    """
    known = itertools.cycle(uuids)
    schema = schemathesis.openapi.from_url(f"{url}/swagger.json")
    checks = [getattr(schemathesis.checks, name) for name in CHECKS]
    result = Pass()
    started = time.monotonic()
    session = requests.Session()
    for found in schema.get_all_operations():
        operation = found.ok()
        result.operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            # nothing to make invalid in an operation without parameters or body
            with contextlib.suppress(hypothesis.errors.Unsatisfiable):
                _run(operation, mode, url, token, examples, checks, session, result, known)
    result.seconds = time.monotonic() - started
    return result


def _run(
    operation: Any,
    mode: GenerationMode,
    url: str,
    token: str,
    examples: int,
    checks: list[Any],
    session: requests.Session,
    result: Pass,
    known: Any,
) -> None:
    def one(case: Any) -> None:
        if result.sent % 4:
            real = next(known)
            if "uuid" in (case.path_parameters or {}):
                case.path_parameters["uuid"] = real
            if isinstance(case.body, dict) and "uuid" in case.body:
                case.body["uuid"] = real
        response = case.call(base_url=url, session=session, params={"token": token}, timeout=30)
        result.sent += 1
        try:
            case.validate_response(response, checks=checks)
        except (Exception, FailureGroup) as exc:  # noqa: BLE001 - every failure is reported, none stops the pass
            curl = case.as_curl_command(base_url=url)
            result.failures.append(f"{operation.label} [{mode.value}]: {str(exc)[:800]}\n{curl}")

    test = hypothesis.given(case=operation.as_strategy(generation_mode=mode))(one)
    test = hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=SEED is None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )(test)
    if SEED is not None:
        test = hypothesis.seed(SEED)(test)
    test()


def test_schemathesis_finds_no_5xx_and_no_answer_outside_the_description(
    farm: Farm, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [("images", (f"img{i}.jpg", b"\xff\xd8\xff\xe0" + os.urandom(2000))) for i in range(3)]
    tasks = [farm.post("/task/new", files=files, data={"name": f"fuzz {i}"}).json()["uuid"] for i in range(4)]
    sessions = []
    for _ in range(4):
        uuid = farm.post("/task/new/init").json()["uuid"]
        assert farm.post(f"/task/new/upload/{uuid}", files=files[:1]).json() == {"success": True}
        sessions.append(uuid)
    for uuid in tasks:
        wait_status(farm, uuid, (40,))
    result = fuzz(farm.url, farm.token, [x for pair in zip(tasks, sessions, strict=True) for x in pair])
    with capsys.disabled():
        print(
            f"\nschemathesis: {result.operations} operations, {result.sent} requests, "
            f"{len(result.failures)} failures, {result.seconds:.1f} s"
        )
    assert result.operations >= 20 and result.sent >= 10 * result.operations
    assert not result.failures, "\n\n".join(result.failures[:20]) + f"\n\n{farm.logs()}"


def test_line_numbers_beyond_64_bits_are_answered_not_a_500(farm: Farm) -> None:
    """Found by the pass: ?line=<a huge number> made Redis refuse the range and the route answer 500."""
    files = [("images", ("a.jpg", b"\xff\xd8\xff\xe0" + os.urandom(2000)))]
    uuid = farm.post("/task/new", files=files).json()["uuid"]
    wait_status(farm, uuid, (40,))
    lines = farm.get(f"/task/{uuid}/output").json()
    assert len(lines) > 3
    huge = 528660563052458672128
    for value, expected in ((huge, []), (-huge, lines), (2**63, []), (-(2**63), lines)):
        response = farm.get(f"/task/{uuid}/output", params={"line": value})
        assert response.status_code == 200 and response.json() == expected, (value, response.text[:300])
        info = farm.get(f"/task/{uuid}/info", params={"with_output": value})
        assert info.status_code == 200 and info.json()["output"] == expected, (value, info.text[:300])


def test_an_asset_name_with_a_newline_gets_the_nodeodm_error_not_a_404(farm: Farm) -> None:
    """Found by the pass: Flask's path converter does not match a newline, so the route answered 404."""
    files = [("images", ("a.jpg", b"\xff\xd8\xff\xe0" + os.urandom(2000)))]
    uuid = farm.post("/task/new", files=files).json()["uuid"]
    for asset in ("all.zip%0A", "a%0Ab/c", "%0A"):
        response = requests.get(f"{farm.url}/task/{uuid}/download/{asset}", params={"token": farm.token}, timeout=30)
        assert response.status_code == 200 and response.json() == {"error": "Invalid asset"}, response.text[:300]
