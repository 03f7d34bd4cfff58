"""Node-level routes: /info, /options, /auth/*, plus /health, /ready, /metrics and /workers for operators."""

from __future__ import annotations

import hmac
from collections.abc import Callable

from flask import Blueprint, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from api.app import accounts, caller, node
from api.fields import form_fields
from api.openapi import openapi
from shared.farm import farm_status
from shared.metrics import FarmCollector
from shared.node import API_VERSION
from shared.taskstore import now_ms

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
    """Liveness for load balancers: this process answers. Touches nothing else (see /ready)."""
    return jsonify({"status": "ok"})


@bp.get("/ready")
def ready():
    """Readiness: Redis and the object store answer and a worker is alive; 503 names what failed."""
    n = node()
    checks: dict[str, str] = {}
    failed: list[str] = []

    def check(name: str, probe: Callable[[], str]) -> None:
        try:
            checks[name] = probe()
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            checks[name] = f"{type(exc).__name__}: {exc}"
            failed.append(name)

    def redis_ok() -> str:
        n.tasks.r.ping()
        return "ok"

    def store_ok() -> str:
        n.store.check()
        return "ok"

    def workers_alive() -> str:
        live = len(n.live_workers())
        if not live:
            raise LookupError("no live worker")
        return f"{live} live"

    check("redis", redis_ok)
    check("store", store_ok)
    check("workers", workers_alive)
    response = jsonify({"status": "not ready" if failed else "ready", "failed": failed, "checks": checks})
    response.status_code = 503 if failed else 200
    return response


@bp.get("/workers")
def workers():
    """The live worker hosts (an extension: NodeODM clients ignore it)."""
    return jsonify(node().live_workers())


@bp.get("/farm")
def farm():
    """Workers, queue depth per queue and why queued tasks cannot start (an extension: the web app's panel)."""
    n = node()
    return jsonify(farm_status(n.live_workers(), n.tasks.occupancy(), now_ms()))


@bp.get("/metrics")
def metrics():
    """Prometheus text format (an extension): task counters and durations, queues, workers, bytes, webhooks.

    Authenticated as Prometheus does it, with `Authorization: Bearer <ODM_FARM_METRICS_TOKEN>`; without a
    metrics token the node token works as bearer or as ?token=. A wrong or missing token is a 401.
    """
    n = node()
    if not metrics_authorized(n.settings.metrics_token, n.settings.token):
        return Response(
            "Unauthorized: send Authorization: Bearer <token>\n",
            status=401,
            mimetype="text/plain",
            headers={"WWW-Authenticate": 'Bearer realm="odm-farm metrics"'},
        )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FarmCollector(n))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def metrics_authorized(metrics_token: str, node_token: str) -> bool:
    expected = metrics_token or node_token
    if not expected:
        return True
    given = ""
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        given = credentials.strip()
    elif not metrics_token:
        given = request.args.get("token", "")
    return hmac.compare_digest(given.encode(), expected.encode())


@bp.get("/swagger.json")
def swagger():
    """The OpenAPI description of every route (api/openapi.py); the reference node serves one here too."""
    return jsonify(openapi(API_VERSION))
