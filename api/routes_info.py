"""Node-level routes: /info, /options, /auth/*, plus /health and /workers for operators."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from api.app import node

bp = Blueprint("info", __name__)


@bp.get("/info")
def info():
    if request.args.get("_debugUnauthorized"):
        return Response(status=401)
    return jsonify(node().info())


@bp.get("/options")
def options():
    return jsonify(node().catalog())


@bp.get("/auth/info")
def auth_info():
    return jsonify(
        {
            "message": "Authentication is not available on this node: pass the node's token as ?token=.",
            "loginUrl": None,
            "registerUrl": None,
        }
    )


@bp.post("/auth/login")
def auth_login():
    return jsonify({"error": "Not available"})


@bp.post("/auth/register")
def auth_register():
    return jsonify({"error": "Not available"})


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
