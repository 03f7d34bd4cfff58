"""The Flask application factory: builds the clients, registers the routes, maps errors to the NodeODM form."""

from __future__ import annotations

import contextlib
import errno
import hmac
import logging
import socket
from collections.abc import Callable, Iterable
from typing import Any

import kombu.exceptions
import redis
from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.routing import PathConverter

from api.uploads import MAX_FIELD_MEMORY
from shared.accounts import ANONYMOUS, NODE, Accounts, Caller
from shared.errors import FarmError, Unauthorized
from shared.node import Node
from shared.outage import HOLD_SECONDS, current_hold, hold_scope
from shared.queue import make_celery
from shared.settings import Settings
from shared.storage import ObjectNotFound, StorageError, make_store
from shared.taskstore import TaskStore

log = logging.getLogger(__name__)

# Routes that answer without a token: health for orchestrators, auth for clients that need to log in.
PUBLIC_ENDPOINTS = {
    "info.health",
    "info.ready",
    "info.metrics",  # checks its own bearer token and answers 401 (api/routes_info.py)
    "info.auth_info",
    "info.auth_login",
    "info.auth_register",
    "info.swagger",
    "web.index",
    "web.asset",
}

# Routes outside the NodeODM surface: during an outage they answer 503 at once, as operators expect.
# Every other route is held while Redis restarts and then dropped, never answered with a 5xx (clients
# fail a task on a 5xx but retry a dropped connection).
OPERATOR_ENDPOINTS = {
    "info.health",
    "info.ready",
    "info.metrics",
    "info.workers",
    "info.farm",
    "info.swagger",
    "web.index",
    "web.asset",
}
OPERATOR_HOLD_SECONDS = 1.0  # enough to replace a pooled connection that a Redis restart broke

_DROP = "odm_farm.drop"
DEPENDENCY_ERRORS = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
    StorageError,
)


def create_app(settings: Settings | None = None, *, check_store: bool = True) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask(__name__, static_folder=None)  # no static files: every route is in api/openapi.py
    app.config["SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = (
        settings.max_upload_mb * 1024 * 1024 if settings.max_upload_mb else None
    )
    # request.form (init, commands) gets the same field limit as the streaming upload parser
    app.config["MAX_FORM_MEMORY_SIZE"] = MAX_FIELD_MEMORY
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.compact = True  # type: ignore[attr-defined]

    tasks = TaskStore.from_url(settings.redis_url)
    store = make_store(settings)
    if check_store:
        store.check()
    celery = make_celery(settings)
    # publishing a task after commit: ride out a Redis restart like the other commands (~15 s), not 0.6 s
    celery.conf.task_publish_retry_policy = {
        "max_retries": 30,
        "interval_start": 0,
        "interval_step": 0.2,
        "interval_max": 0.5,
    }
    node = Node(settings, tasks, store, celery)
    app.extensions["node"] = node
    accounts = Accounts(tasks.r, settings)
    app.extensions["accounts"] = accounts
    from api.fastpath import FastReads

    # the polled read routes are answered before Flask; all else, and their errors, by Flask
    app.wsgi_app = HoldDuringOutage(FastReads(app.wsgi_app, node, accounts))  # type: ignore[method-assign]

    # a path segment may hold any character, a newline too: the route then answers in the NodeODM form
    app.url_map.converters["path"] = AnyPathConverter

    from api import routes_info, routes_new, routes_tasks, web

    app.register_blueprint(routes_info.bp)
    app.register_blueprint(routes_new.bp)
    app.register_blueprint(routes_tasks.bp)
    app.register_blueprint(web.bp)

    @app.before_request
    def operators_fail_fast():
        hold = current_hold()
        if hold is not None and request.endpoint in OPERATOR_ENDPOINTS:
            hold.seconds = OPERATOR_HOLD_SECONDS

    @app.before_request
    def check_token():
        g.caller = identify(settings, accounts)
        if g.caller is None:
            g.caller = ANONYMOUS  # sees nothing, may not create users
            if request.endpoint not in PUBLIC_ENDPOINTS:
                raise Unauthorized()
        return None

    @app.after_request
    def open_cors(response):
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    @app.errorhandler(FarmError)
    def farm_error(exc: FarmError):
        return nodeodm_error(exc.message, no_retry=exc.no_retry)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge):
        # werkzeug raises the same exception for the request limit and for the form limits
        limit = settings.max_upload_mb
        if limit and (request.content_length or 0) > limit * 1024 * 1024:
            return nodeodm_error(f"Request too large: the limit is {limit} MB per request.", no_retry=True)
        field_mb = MAX_FIELD_MEMORY // (1024 * 1024)
        message = f"Request too large: a form field is over {field_mb} MB, or the form has too many parts"
        if limit and request.content_length is None:
            message += f", or the request is over {limit} MB"
        return nodeodm_error(message + ".", no_retry=True)

    @app.errorhandler(ObjectNotFound)
    def missing_object(exc: ObjectNotFound):
        return nodeodm_error("Asset not ready")

    @app.errorhandler(redis.exceptions.ConnectionError)
    @app.errorhandler(redis.exceptions.TimeoutError)
    @app.errorhandler(kombu.exceptions.OperationalError)
    @app.errorhandler(StorageError)
    def unavailable(exc: Exception):
        if request.endpoint not in OPERATOR_ENDPOINTS:
            log.warning(
                "%s %s: dependency unavailable (%s: %s), dropping the connection so that the client retries",
                request.method,
                request.path,
                type(exc).__name__,
                exc,
            )
            request.environ[_DROP] = True
            return Response(status=200)  # never sent: HoldDuringOutage drops the connection instead
        log.error("dependency unavailable: %s", exc)
        response = jsonify({"error": f"Service temporarily unavailable, try again: {type(exc).__name__}"})
        response.status_code = 503
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        response = jsonify({"error": exc.description or exc.name})
        response.status_code = exc.code or 500
        return response

    return app


OWNER_HEADER = "X-Odm-Farm-Owner"  # set by a worker's split-merge proxy (workers/smproxy.py)


def identify(settings: Settings, accounts: Accounts) -> Caller | None:
    """Who calls: the node (node token, or a farm without one), a user (a login token), or None (refused).

    With the node token, the split-merge proxy's OWNER_HEADER names the user of the parent task: the submodel
    is created as theirs. Only the node token may say so (whoever holds it may act for anyone anyway).
    """
    if not settings.token:
        return NODE
    return identify_token(
        settings, accounts, request.args.get("token", ""), lambda: request.headers.get(OWNER_HEADER, "")
    )


def identify_token(
    settings: Settings, accounts: Accounts, given: str, owner_header: Callable[[], str]
) -> Caller | None:
    """identify() for a request's `token` argument; `owner_header` reads the OWNER_HEADER (api.fastpath
    calls this too, without Flask)."""
    if hmac.compare_digest(given.encode("utf-8", "surrogatepass"), settings.token.encode()):
        owner = owner_header() if settings.accounts else ""
        return Caller(user=owner, admin=False, submodel=True) if owner else NODE
    if settings.accounts:
        return accounts.token_caller(given)
    return None


def caller() -> Caller:
    return g.get("caller") or NODE


def accounts() -> Accounts:
    from flask import current_app

    return current_app.extensions["accounts"]


def nodeodm_error(message: str, *, no_retry: bool = False):
    """HTTP 200 with {"error": ...}: what NodeODM clients parse. Commands add "success": false."""
    body: dict[str, object] = {}
    if g.get("command_route"):
        body["success"] = False
    body["error"] = message
    if no_retry:
        body["noRetry"] = True
    return jsonify(body)


def node() -> Node:
    from flask import current_app

    return current_app.extensions["node"]


class AnyPathConverter(PathConverter):
    """werkzeug's `path` converter, matching newlines as well (its `.` does not)."""

    regex = "[^/][\\s\\S]*?"


class _Dropped(Exception):
    pass


class HoldDuringOutage:
    """WSGI middleware: one Redis hold budget per request, and a dropped connection instead of a 5xx.

    The error handler marks a NodeODM request whose dependency stayed down past the budget; its response is
    never started. The client's socket is shut down (gunicorn gthread exposes it as `gunicorn.socket`), and a
    BrokenPipeError tells gunicorn the client is gone, which it ignores quietly: no traceback, no 500, no
    access-log line.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], hold_seconds: float = HOLD_SECONDS) -> None:
        self.app = app
        self.hold_seconds = hold_seconds

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if environ.get(_DROP):
                raise _Dropped()
            return start_response(status, headers, exc_info)

        with hold_scope(self.hold_seconds):
            try:
                return self.app(environ, start)
            except _Dropped:
                drop_connection(environ.get("gunicorn.socket"))
                raise BrokenPipeError(
                    errno.EPIPE, "connection dropped: a dependency is unavailable"
                ) from None


def drop_connection(sock: socket.socket | None) -> None:
    """Close the client's connection without an answer (a reset when it still had a body to send)."""
    if sock is None:
        return
    with contextlib.suppress(OSError):  # the client may have left first
        sock.shutdown(socket.SHUT_RDWR)
