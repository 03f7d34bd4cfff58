"""Node-level routes: /info, /options, /auth/*, plus /health and /workers for operators."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from api.app import accounts, caller, node
from api.fields import form_fields
from api.openapi import openapi
from shared import outbox
from shared.node import API_VERSION
from shared.taskstore import Keys

bp = Blueprint("info", __name__)


@bp.get("/info")
def info():
    if request.args.get("_debugUnauthorized"):
        return Response(status=401)
    return jsonify(node().info(caller()))


@bp.get("/options")
def options():
    return jsonify(node().catalog())


@bp.get("/auth/info")
def auth_info():
    settings = node().settings
    if not settings.accounts:
        return jsonify(
            {
                "message": "Authentication is not available on this node: pass the node's token as ?token=.",
                "loginUrl": None,
                "registerUrl": None,
            }
        )
    message = "Log in with your username and password."
    if not settings.registration:
        message += " Registration is closed: ask the node's administrator for an account."
    return jsonify(
        {
            "message": message,
            "loginUrl": "/auth/login",
            "registerUrl": "/auth/register" if settings.registration else None,
        }
    )


@bp.post("/auth/login")
def auth_login():
    if not node().settings.accounts:
        return jsonify({"error": "Not available"})
    fields = form_fields()
    token = accounts().login(
        fields.get("username", ""), fields.get("password", ""), request.remote_addr or ""
    )
    return jsonify({"token": token})


@bp.post("/auth/register")
def auth_register():
    """A new account and its first token: open to anyone with ODM_FARM_REGISTRATION, else to admins only."""
    settings = node().settings
    if not settings.accounts:
        return jsonify({"error": "Not available"})
    if not settings.registration and not (caller().admin and not caller().submodel):
        # the node token or an admin user's token may create users when registration is closed
        return jsonify({"error": "Registration is disabled on this node.", "noRetry": True})
    fields = form_fields()
    name = fields.get("username", "")
    accounts().add_user(name, fields.get("password", ""))
    return jsonify({"success": True, "token": accounts().issue_token(name)})


@bp.get("/health")
def health():
    n = node()
    try:
        n.tasks.r.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
        response = jsonify({"status": "unhealthy", "redis": str(exc)})
        response.status_code = 503
        return response
    return jsonify({"status": "ok", "workers": len(n.live_workers())})


@bp.get("/workers")
def workers():
    """The live worker hosts (an extension: NodeODM clients ignore it)."""
    return jsonify(node().live_workers())


@bp.get("/metrics")
def metrics():
    """Prometheus text format: the farm's queue, slots and workers (an extension, outside the NodeODM API)."""
    n = node()
    workers, active = n.tasks.live_workers_and_active(n.settings.worker_ttl)
    running = sum(len(w.get("running", ())) for w in workers)
    values = {
        "odm_farm_tasks_active": (active, "tasks queued or running"),
        "odm_farm_tasks_running_on_workers": (running, "tasks a worker is processing now"),
        "odm_farm_tasks_total": (n.tasks.r.zcard(Keys.tasks), "tasks known to the farm"),
        "odm_farm_upload_sessions": (n.tasks.r.zcard(Keys.uploads), "uploads not committed yet"),
        "odm_farm_webhooks_pending": (outbox.pending(n.tasks.r), "webhook deliveries waiting or retrying"),
        "odm_farm_workers": (len(workers), "live workers"),
        "odm_farm_slots": (
            sum(int(w.get("slots", 0)) for w in workers),
            "tasks the live workers can run at once",
        ),
        "odm_farm_worker_free_disk_bytes": (
            min((int(w.get("freeDisk", 0)) for w in workers), default=0),
            "free scratch disk on the fullest worker",
        ),
    }
    lines = []
    for name, (value, help_text) in values.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"]
    return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")


@bp.get("/swagger.json")
def swagger():
    """The OpenAPI description of every route (api/openapi.py); the reference node serves one here too."""
    return jsonify(openapi(API_VERSION))
