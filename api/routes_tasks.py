"""Task routes: list, info, output, download (with ranges or a redirect), cancel, remove, restart."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import orjson
from flask import Blueprint, Response, g, jsonify, redirect, request

from api.app import caller, node
from api.fields import form_fields
from shared import metrics
from shared.assets import ASSETS
from shared.errors import InvalidRequest
from shared.models import TaskStatus
from shared.node import Node, results_prefix
from shared.storage import ObjectNotFound

bp = Blueprint("tasks", __name__)


# The three polled routes below are answered by api.fastpath.FastReads before Flask sees them; these views
# answer what it leaves to Flask (errors, outages) with the same functions, so both give the same bodies.
@bp.get("/task/list")
def task_list():
    offset, limit = list_page(request.args)
    return json_response(node().list_json(caller(), offset, limit))


@bp.get("/task/<uuid>/info")
def info(uuid: str):
    start = _task_arg(uuid, "with_output") if "with_output" in request.args else None
    return json_response(node().info_json(uuid, caller(), start))


@bp.get("/task/<uuid>/output")
def output(uuid: str):
    return json_response(orjson.dumps(node().console(uuid, caller(), _task_arg(uuid, "line"))))


def _task_arg(uuid: str, name: str) -> int:
    """A task route's number argument; an unknown task is answered "not found" before a bad argument."""
    try:
        return int_arg(request.args, name)
    except InvalidRequest:
        node().console(uuid, caller(), -1)  # raises TaskNotFound for a task this caller cannot see
        raise


def json_response(body: bytes) -> Response:
    return Response(body + b"\n", mimetype="application/json")  # with jsonify's final newline


# /task/list pages: at most this many uuids per page (no limit = every task, as NodeODM answers)
MAX_PAGE = 10_000


def list_page(args: Mapping[str, str]) -> tuple[int, int | None]:
    """?offset=&limit= of /task/list: no limit = every task from offset (the NodeODM answer)."""
    offset = int_arg(args, "offset")
    if offset < 0:
        raise InvalidRequest("Invalid offset: it must be 0 or more")
    if args.get("limit") in (None, ""):
        return offset, None
    limit = int_arg(args, "limit")
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"Invalid limit: it must be between 1 and {MAX_PAGE}")
    return offset, limit


def asset_key(uuid: str, asset: str, run_id: str) -> str:
    """The stored object of `asset` as the run `run_id` wrote it (each run's results are its own)."""
    if asset == "all.zip":
        return results_prefix(uuid, run_id) + "all.zip"
    if asset in ASSETS:
        return results_prefix(uuid, run_id) + "assets/" + asset
    raise InvalidRequest("Invalid asset")


# a completed task cancelled afterwards keeps its results until it is removed, as the reference does
_SERVED = (str(int(TaskStatus.COMPLETED)), str(int(TaskStatus.CANCELED)))


@bp.route("/task/<uuid>/download/<path:asset>", methods=["GET", "HEAD"])
def download(uuid: str, asset: str):
    n = node()
    record = n.get(uuid, caller())
    run_id = record.get("resultsRun") or ""
    key = asset_key(uuid, asset, run_id)
    if not run_id or record.get("status") not in _SERVED:
        # results count once the run that wrote them turned the task COMPLETED: never serve a run that
        # may still fail or be superseded
        raise InvalidRequest("Asset not ready")
    try:
        size = n.store.size(key)
    except ObjectNotFound:
        # a finished task will never produce a missing asset: "not ready" would have clients wait forever
        if asset != "all.zip":
            raise InvalidRequest(f"Asset not available: this task did not produce {asset}") from None
        raise InvalidRequest("Asset not ready") from None
    if n.settings.download_redirect:
        url = n.store.presigned_url(key, filename=asset)
        if url:
            metrics.count(n.tasks.r, "download_redirected_bytes", _asked(size))
            return redirect(url, code=302)
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Disposition": f"attachment; filename={asset}",
        "Content-Type": "application/zip" if asset.endswith(".zip") else "application/octet-stream",
    }
    start, end, status = 0, size - 1, 200
    if request.range is not None and size > 0:
        span = request.range.range_for_length(size)
        if span is None:
            return Response(status=416, headers={"Content-Range": f"bytes */{size}", **headers})
        start, end, status = span[0], span[1] - 1, 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1 if size else 0)
    if request.method == "HEAD" or size == 0:
        return Response(status=status, headers=headers)
    body = _counted(n, n.store.iter_range(key, start, end))
    return Response(body, status=status, headers=headers, direct_passthrough=True)


def _asked(size: int) -> int:
    """Bytes a request asks for: its range (as the store will answer it) or the whole file."""
    span = request.range.range_for_length(size) if request.range is not None and size > 0 else None
    return span[1] - span[0] if span else size


def _counted(n: Node, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The body as sent, counted once it ends or the client leaves (the bytes that really went out)."""
    sent = 0
    try:
        for chunk in chunks:
            yield chunk
            sent += len(chunk)
    finally:
        metrics.count(n.tasks.r, "download_bytes", sent)


def _command_uuid() -> tuple[str, dict[str, str]]:
    g.command_route = True
    body = _body()
    uuid = body.get("uuid")
    if not uuid:
        raise InvalidRequest("uuid param missing.")
    return uuid, body


@bp.post("/task/cancel")
def cancel():
    uuid, _ = _command_uuid()
    node().cancel(uuid, caller=caller())
    return jsonify({"success": True})


@bp.post("/task/remove")
def remove():
    uuid, _ = _command_uuid()
    node().remove(uuid, caller())
    return jsonify({"success": True})


@bp.post("/task/restart")
def restart():
    uuid, body = _command_uuid()
    node().restart(uuid, body.get("options"), caller())
    return jsonify({"success": True})


def _body() -> dict[str, str]:
    """cancel/remove/restart bodies arrive as urlencoded, multipart or JSON; also accept the query string."""
    fields = form_fields()
    for key in ("uuid", "options"):
        if key not in fields and key in request.args:
            fields[key] = request.args[key]
    return fields


# no console is this long; Redis refuses list indexes beyond 64 bits, so larger numbers are clamped
_LINE_LIMIT = 2**62


def int_arg(args: Mapping[str, str], name: str) -> int:
    raw = args.get(name, "0") or "0"
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"Invalid {name}: {raw[:40]}") from None
    return max(-_LINE_LIMIT, min(_LINE_LIMIT, value))
