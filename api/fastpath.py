"""The polled read routes, answered without Flask: `GET /task/{uuid}/info`, `/task/{uuid}/output`, `/task/list`.

WebODM polls the info of every active task every few seconds, and ClusterODM polls every node; a Flask
dispatch (request context, URL map, hooks, response object) costs more than the read itself. FastReads is a
WSGI middleware inside HoldDuringOutage that answers these routes' successful requests with the same
functions the Flask views use (shared.node.Node.info_json, console, list_json) after the same token check
(api.app.identify_token), and hands every other request to Flask untouched — errors too: an unknown task,
a refused token, a bad argument or a Redis outage are answered by Flask's views and error handlers, which
run the same call again and fail the same way, so every answer that is not a plain success is Flask's own.

What it repeats from the Flask app: the token check of `check_token` and the CORS header of `open_cors`.
A new before/after-request hook that must apply to these routes has to be added here too
(tests/api/test_fastpath.py compares both paths on every case).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

import orjson
import werkzeug.urls  # noqa: F401 - registers the "werkzeug.url_quote" codec error handler

from api.app import DEPENDENCY_ERRORS, OWNER_HEADER, identify_token
from api.routes_tasks import int_arg, list_page
from shared.accounts import NODE, Accounts, Caller
from shared.errors import FarmError
from shared.node import Node

StartResponse = Callable[..., Any]
_OWNER_ENVIRON = "HTTP_" + OWNER_HEADER.upper().replace("-", "_")


class FastReads:
    def __init__(self, app: Callable[..., Iterable[bytes]], node: Node, accounts: Accounts) -> None:
        self.app = app
        self.node = node
        self.accounts = accounts
        self.settings = node.settings

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "GET":
            try:
                body = self.answer(environ)
            except (FarmError, *DEPENDENCY_ERRORS):
                body = None  # Flask answers: the same call fails there the same way, in the NodeODM form
            if body is not None:
                start_response(
                    "200 OK",
                    [
                        ("Content-Type", "application/json"),
                        ("Content-Length", str(len(body) + 1)),
                        ("Access-Control-Allow-Origin", "*"),
                    ],
                )
                return [body, b"\n"]  # jsonify's final newline, without copying a long body to add it
        return self.app(environ, start_response)

    def answer(self, environ: dict[str, Any]) -> bytes | None:
        """The body of a polled route's success, or None for Flask to answer."""
        parts = environ.get("PATH_INFO", "").split("/")
        if len(parts) == 4 and parts[1] == "task" and parts[3] in ("info", "output") and parts[2]:
            route = parts[3]
        elif len(parts) == 3 and parts[1] == "task" and parts[2] == "list":
            route = "list"
        else:
            return None
        args = _args(environ.get("QUERY_STRING", ""))
        if args is None:
            return None
        caller = self.caller(args, environ)
        if caller is None:
            return None  # Flask refuses it (401, in the NodeODM form)
        if route == "info":
            start = int_arg(args, "with_output") if "with_output" in args else None
            body = self.node.info_json(parts[2], caller, start)
        elif route == "output":
            body = orjson.dumps(self.node.console(parts[2], caller, int_arg(args, "line")))
        else:
            body = self.node.list_json(caller, *list_page(args))
        return body

    def caller(self, args: dict[str, str], environ: dict[str, Any]) -> Caller | None:
        if not self.settings.token:
            return NODE
        return identify_token(
            self.settings, self.accounts, args.get("token", ""), lambda: environ.get(_OWNER_ENVIRON, "")
        )


def _args(query: str) -> dict[str, str] | None:
    """The query as Flask's request.args reads it (the first value of each name); None when it is not
    plain ASCII (Flask decodes those)."""
    if not query:
        return {}
    if not query.isascii():
        return None
    args: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True, errors="werkzeug.url_quote"):
        args.setdefault(name, value)
    return args
