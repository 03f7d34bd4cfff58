"""How a stored task record looks to NodeODM clients (task info), used by the API and by webhooks."""

from __future__ import annotations

import json
from typing import Any

import orjson

from shared.models import TaskStatus
from shared.taskstore import now_ms

# the record fields task info is made of (the API reads only these: shared.taskstore.TaskStore.info_view)
INFO_FIELDS = (
    "uuid",
    "name",
    "dateCreated",
    "status",
    "errorMessage",
    "options",
    "imagesCount",
    "progress",
    "startedAt",
    "processingTime",
)


def processing_time(record: dict[str, str]) -> int:
    started = record.get("startedAt")
    if not started:
        return -1
    status = TaskStatus(int(record["status"]))
    if status.active:
        return max(0, now_ms() - int(started))
    return int(record.get("processingTime") or -1)


def task_info(record: dict[str, str], output: list[str] | None = None) -> dict[str, Any]:
    """The /task/{uuid}/info body: every field PyODM indexes directly is always present."""
    return _info(record, json.loads(record.get("options") or "[]"), output)


def task_info_json(record: dict[str, str], output: list[str] | None = None) -> bytes:
    """task_info as JSON bytes, built for the polled route: the stored options (JSON already, written by
    shared.taskstore) are copied in as they are, not parsed and encoded again."""
    options = orjson.Fragment(record.get("options") or "[]")
    return orjson.dumps(_info(record, options, output))


def _info(record: dict[str, str], options: Any, output: list[str] | None) -> dict[str, Any]:
    status: dict[str, Any] = {"code": int(record["status"])}
    if record.get("errorMessage"):
        status["errorMessage"] = record["errorMessage"]
    info: dict[str, Any] = {
        "uuid": record["uuid"],
        "name": record.get("name") or "",
        "dateCreated": int(record.get("dateCreated") or 0),
        "processingTime": processing_time(record),
        "status": status,
        "options": options,
        "imagesCount": int(record.get("imagesCount") or 0),
        "progress": _progress(record),
    }
    if output is not None:
        info["output"] = output
    return info


def _progress(record: dict[str, str]) -> float | int:
    value = float(record.get("progress") or 0)
    return int(value) if value.is_integer() else round(value, 2)
