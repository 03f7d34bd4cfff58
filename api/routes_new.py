"""Task creation routes: /task/new/init, /task/new/upload/{uuid}, /task/new/commit/{uuid}, /task/new."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from api import uploads
from api.app import caller, node
from api.fields import form_fields
from shared.errors import InvalidRequest

bp = Blueprint("new", __name__)


@bp.post("/task/new/init")
def init():
    form = form_fields()
    uuid = node().init_session(form, request.headers.get("set-uuid"), caller())
    return jsonify({"uuid": uuid})


@bp.post("/task/new/upload/<uuid>")
def upload(uuid: str):
    n = node()
    n.require_session(uuid, caller())
    received = uploads.receive(n, uuid)
    if not received.files:
        raise InvalidRequest("Need at least 1 file.", no_retry=True)
    n.record_uploads(uuid, received.files)
    return jsonify({"success": True})


@bp.post("/task/new/commit/<uuid>")
def commit(uuid: str):
    return jsonify({"uuid": node().commit(uuid, caller())})


@bp.post("/task/new")
def new():
    """One request: the init fields plus `images` parts, or a `zipurl` the node downloads itself."""
    n = node()
    # Fields come before files in every client's body, but validation needs them all: create the session
    # under a provisional uuid only after parsing, and stream files under the uuid chosen up front.
    set_uuid = request.headers.get("set-uuid")
    uuid = n.init_session({"options": "[]"}, set_uuid, caller())
    try:
        received = uploads.receive(n, uuid)
        form = received.form
        if not received.files and not form.get("zipurl"):
            raise InvalidRequest("Need at least 1 file or a zip file url.")
        n.tasks.drop_session(uuid)
        n.init_session(form, uuid, caller())
        n.record_uploads(uuid, received.files)
        n.commit(uuid, caller())
    except BaseException:
        # files first: while Redis is down the session record would survive anyway, and the janitor
        # finds abandoned sessions, not files without one
        n.store.delete_prefix(f"{uuid}/")
        n.tasks.drop_session(uuid)
        raise
    return jsonify({"uuid": uuid})
