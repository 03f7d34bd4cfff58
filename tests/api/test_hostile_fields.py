"""Hostile values in every field of every NodeODM route, through the real API: a task or a clear error, never a 5xx."""

from __future__ import annotations

import json
import os
import uuid as uuidlib
from typing import Any

import pytest
import requests

from tests.support.farm import Farm

# values a client (or an attacker) may put where a number is expected, as form text
TEXT_VALUES = [
    "1e400", "-1e400", "1e20", "-1e20", "1e308", "-1", "0", "1", "1.5", "-0", "NaN", "nan", "inf", "-inf",
    "Infinity", "", " ", "abc", "[1, 2]", "{}", "null", "true", "0x10", "99999999999999999999999999999",
    "-99999999999999999999999999999", "9" * 5000, "1_000", "\x00", "١٢٣",
]
# the same as JSON values (json.dumps(float("inf")) writes Infinity, which Python's parser reads back)
JSON_VALUES: list[Any] = [
    float("inf"), float("-inf"), float("nan"), 1e20, -1, 0, 1.5, 10**30, -(10**30), "", "abc", [], [1, 2], {},
    None, True, False, "1e400", "NaN",
]
RAW_JSON_NUMBERS = ["1e400", "-1e400", "1e999999", "123456789012345678901234567890", "-0.0"]

INIT_FIELDS = ["dateCreated", "skipPostProcessing", "name", "webhook", "outputs", "zipurl", "options"]
NUMERIC_OPTIONS = ["min-num-features", "crop", "dem-resolution", "orthophoto-resolution", "max-concurrency",
                   "pc-quality", "fast-orthophoto", "sm-cluster"]


def jpeg() -> bytes:
    return b"\xff\xd8\xff\xe0" + os.urandom(500)


def nodeodm_answer(response: requests.Response, what: str) -> Any:
    """The body when the answer is a NodeODM one (200, JSON: a result or an error), else fail."""
    assert response.status_code < 500, f"{what}: HTTP {response.status_code} {response.text[:300]}"
    assert response.status_code == 200, f"{what}: HTTP {response.status_code} {response.text[:300]}"
    assert response.headers["Content-Type"].startswith("application/json"), what
    body = response.json()
    if isinstance(body, dict) and "error" in body:
        assert isinstance(body["error"], str) and body["error"], f"{what}: empty error {body}"
    return body


def _init_ok_or_error(farm: Farm, body: Any, what: str) -> str | None:
    if isinstance(body, dict) and "uuid" in body:
        return str(body["uuid"])
    assert isinstance(body, dict) and "error" in body, f"{what}: {body}"
    return None


def _commit_and_check(farm: Farm, uuid: str, what: str) -> None:
    """A session the API accepted must upload, commit and report info like any other task."""
    nodeodm_answer(farm.post(f"/task/new/upload/{uuid}", files=[("images", ("a.jpg", jpeg()))]), what)
    body = nodeodm_answer(farm.post(f"/task/new/commit/{uuid}"), what)
    assert body == {"uuid": uuid}, f"{what}: commit answered {body}"
    info = nodeodm_answer(farm.get(f"/task/{uuid}/info"), what)
    for key in ("uuid", "name", "dateCreated", "processingTime", "status", "options", "imagesCount"):
        assert key in info, f"{what}: info lacks {key}: {info}"
    farm.post("/task/remove", data={"uuid": uuid})


@pytest.mark.parametrize("field", INIT_FIELDS)
def test_init_form_fields_never_answer_5xx(farm: Farm, field: str) -> None:
    for value in TEXT_VALUES:
        what = f"init form {field}={value[:40]!r}"
        uuid = _init_ok_or_error(farm, nodeodm_answer(farm.post("/task/new/init", data={field: value}), what), what)
        if uuid and field in ("dateCreated", "skipPostProcessing", "name", "outputs"):
            _commit_and_check(farm, uuid, what)
        elif uuid:
            farm.redis.delete(f"odmfarm:upload:{uuid}")


@pytest.mark.parametrize("field", INIT_FIELDS)
def test_init_json_fields_never_answer_5xx(farm: Farm, field: str) -> None:
    for value in JSON_VALUES:
        what = f"init json {field}={value!r}"
        response = farm.post("/task/new/init", data=json.dumps({field: value}),
                             headers={"Content-Type": "application/json"})
        uuid = _init_ok_or_error(farm, nodeodm_answer(response, what), what)
        if uuid and field in ("dateCreated", "skipPostProcessing"):
            _commit_and_check(farm, uuid, what)
    for raw in RAW_JSON_NUMBERS:
        what = f"init raw json {field}={raw}"
        response = farm.post("/task/new/init", data=f'{{"{field}": {raw}}}',
                             headers={"Content-Type": "application/json"})
        uuid = _init_ok_or_error(farm, nodeodm_answer(response, what), what)
        if uuid and field == "dateCreated":
            _commit_and_check(farm, uuid, what)


def test_date_created_is_bounded(farm: Farm) -> None:
    """Out-of-range dates are refused with a clear, final error; a plausible one is kept as sent."""
    for value in ("1e400", "1e20", "-1", "NaN", "inf", "253402300800000"):
        body = nodeodm_answer(farm.post("/task/new/init", data={"dateCreated": value}), value)
        assert "dateCreated" in body.get("error", ""), f"dateCreated={value}: {body}"
        assert body.get("noRetry") is True, body
    uuid = nodeodm_answer(farm.post("/task/new/init", data={"dateCreated": "1700000000000"}), "ok")["uuid"]
    _commit_and_check_date(farm, uuid, 1700000000000)


def _commit_and_check_date(farm: Farm, uuid: str, expected: int) -> None:
    farm.post(f"/task/new/upload/{uuid}", files=[("images", ("a.jpg", jpeg()))])
    assert farm.post(f"/task/new/commit/{uuid}").json() == {"uuid": uuid}
    info = farm.get(f"/task/{uuid}/info").json()
    assert info["dateCreated"] == expected
    assert info["name"] == "Task of 2023-11-14T22:13:20.000Z"
    farm.post("/task/remove", data={"uuid": uuid})


@pytest.mark.parametrize("option", NUMERIC_OPTIONS)
def test_option_values_never_answer_5xx(farm: Farm, option: str) -> None:
    for value in [*JSON_VALUES, *TEXT_VALUES]:
        what = f"option {option}={value!r:.60}"
        options = json.dumps([{"name": option, "value": value}])
        _init_ok_or_error(farm, nodeodm_answer(farm.post("/task/new/init", data={"options": options}), what), what)
    for raw in RAW_JSON_NUMBERS:
        what = f"option {option} raw {raw}"
        options = f'[{{"name": "{option}", "value": {raw}}}]'
        _init_ok_or_error(farm, nodeodm_answer(farm.post("/task/new/init", data={"options": options}), what), what)


def test_one_request_task_fields_never_answer_5xx(farm: Farm) -> None:
    for field in ("dateCreated", "skipPostProcessing", "options"):
        for value in ("1e400", "1e20", "-1", "NaN", "", "abc", "[1]", "99999999999999999999999"):
            what = f"/task/new {field}={value}"
            response = farm.post("/task/new", data={field: value}, files=[("images", ("a.jpg", jpeg()))])
            body = nodeodm_answer(response, what)
            if "uuid" in body:
                info = nodeodm_answer(farm.get(f"/task/{body['uuid']}/info"), what)
                assert info["uuid"] == body["uuid"], what
                farm.post("/task/remove", data={"uuid": body["uuid"]})
            else:
                assert "error" in body, what


@pytest.fixture(scope="module")
def finished_task(farm: Farm) -> str:
    body = farm.post("/task/new", files=[("images", ("a.jpg", jpeg()))]).json()
    return str(body["uuid"])


def test_query_numbers_never_answer_5xx(farm: Farm, finished_task: str) -> None:
    values = [*TEXT_VALUES, "-99999999999999999999", "9223372036854775808", "-9223372036854775809"]
    for value in values:
        if len(value) > 4000:
            continue  # past gunicorn's request-line limit: it answers 414 itself, before the app
        for path, arg in ((f"/task/{finished_task}/info", "with_output"), (f"/task/{finished_task}/output", "line")):
            what = f"{path}?{arg}={value[:40]!r}"
            body = nodeodm_answer(farm.get(path, params={arg: value}), what)
            if isinstance(body, dict) and "error" in body:
                continue
            output = body["output"] if arg == "with_output" else body
            assert isinstance(output, list), what


def test_command_and_path_values_never_answer_5xx(farm: Farm) -> None:
    for value in [*TEXT_VALUES, str(uuidlib.uuid4())]:
        for route in ("/task/cancel", "/task/remove", "/task/restart"):
            what = f"{route} uuid={value[:40]!r}"
            body = nodeodm_answer(farm.post(route, data={"uuid": value}), what)
            assert body.get("success") is False and body.get("error"), f"{what}: {body}"
            body = nodeodm_answer(farm.post(route, json={"uuid": value}), what)
            assert body.get("success") is False and body.get("error"), f"{what}: {body}"
        for path in ("/task/new/upload/{}", "/task/new/commit/{}", "/task/{}/info", "/task/{}/output",
                     "/task/{}/download/all.zip"):
            target = path.format(requests.utils.quote(value or "x", safe=""))
            what = f"{path} with {value[:40]!r}"
            call = farm.get if "/info" in path or "/output" in path or "download" in path else farm.post
            response = call(target)
            assert response.status_code < 500, f"{what}: HTTP {response.status_code}"
        what = f"set-uuid {value[:40]!r}"
        if any(ord(ch) < 32 for ch in value):
            continue  # gunicorn itself refuses control characters in a header (HTTP 400), before the app
        try:
            response = farm.post("/task/new/init", headers={"set-uuid": value})
        except ValueError:  # requests refuses header values with control characters itself
            continue
        nodeodm_answer(response, what)


def test_restart_options_never_answer_5xx(farm: Farm, finished_task: str) -> None:
    from tests.e2e.helpers import wait_status

    wait_status(farm, finished_task, (30, 40, 50))
    for value in JSON_VALUES:
        for option in ("min-num-features", "crop"):
            options = json.dumps([{"name": option, "value": value}])
            what = f"restart {option}={value!r}"
            body = nodeodm_answer(farm.post("/task/restart", data={"uuid": finished_task, "options": options}), what)
            if body.get("success"):
                farm.post("/task/cancel", data={"uuid": finished_task})  # restartable again at once
                wait_status(farm, finished_task, (30, 40, 50))
            else:
                assert body.get("error"), what


# --- deep nesting --------------------------------------------------------------------------------


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [2000, 100_000])
def test_deeply_nested_json_is_a_clear_error(farm: Farm, finished_task: str, depth: int) -> None:
    deep_object = '{"a":' * depth + "1" + "}" * depth
    cases = [
        ("/task/new/init", {"data": {"options": nested(depth)}}),
        ("/task/new/init", {"data": f'{{"options": {nested(depth)}}}', "headers": {"Content-Type": "application/json"}}),
        ("/task/new/init", {"data": nested(depth), "headers": {"Content-Type": "application/json"}}),
        ("/task/new/init", {"data": deep_object, "headers": {"Content-Type": "application/json"}}),
        ("/task/new/init", {"data": f'{{"outputs": {nested(depth)}}}', "headers": {"Content-Type": "application/json"}}),
        ("/task/new/init", {"data": {"outputs": nested(depth)}}),
        ("/task/restart", {"data": f'{{"uuid": "{finished_task}", "options": {nested(depth)}}}',
                           "headers": {"Content-Type": "application/json"}}),
        ("/task/restart", {"data": {"uuid": finished_task, "options": nested(depth)}}),
        ("/task/cancel", {"data": f'{{"uuid": {nested(depth)}}}', "headers": {"Content-Type": "application/json"}}),
        ("/task/new", {"data": {"options": nested(depth)}, "files": [("images", ("a.jpg", jpeg()))]}),
    ]
    for route, kwargs in cases:
        what = f"{route} nested {depth} {str(kwargs)[:60]}"
        body = nodeodm_answer(farm.post(route, **kwargs), what)
        assert isinstance(body, dict) and body.get("error"), f"{what}: {body}"
        assert "nested" in body["error"] or "Invalid" in body["error"] or "Malformed" in body["error"], body


# --- file names ----------------------------------------------------------------------------------


def test_uploaded_names_are_stored_without_bidi_or_control_characters(farm: Farm) -> None:
    from tests.e2e.helpers import wait_status

    uuid = farm.post("/task/new/init").json()["uuid"]
    names = {
        "evil\u202egpj.exe.jpg": "evilgpj.exe.jpg",
        "zero\u200bwidth.jpg": "zerowidth.jpg",
        "esc\x1b[2Jape.jpg": "esc[2Jape.jpg",
        "\u2066iso\u2069late.jpg": "isolate.jpg",
        "\u202e.jpg": "_.jpg",
    }
    for raw in names:
        body = farm.post(f"/task/new/upload/{uuid}", files=[("images", (raw, jpeg()))]).json()
        assert body == {"success": True}, (raw, body)
    # a second spelling of a name already stored is the same file again: it replaces the first
    retry = jpeg()
    farm.post(f"/task/new/upload/{uuid}", files=[("images", ("zero\u200cwidth.jpg", retry))])
    # a name of invisible characters only is refused with a clear, final error
    body = farm.post(f"/task/new/upload/{uuid}", files=[("images", ("\u202e\u200b", jpeg()))]).json()
    assert "file name" in body["error"] and body["noRetry"] is True, body
    assert farm.post(f"/task/new/commit/{uuid}").json() == {"uuid": uuid}
    info = wait_status(farm, uuid, (40,))
    assert info["imagesCount"] == len(names)
    stored = sorted(p.name for p in (farm.root / "storage" / uuid / "inputs").iterdir())
    assert stored == sorted(names.values())
    assert (farm.root / "storage" / uuid / "inputs" / "zerowidth.jpg").read_bytes() == retry
