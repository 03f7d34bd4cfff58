"""The API while Redis is unreachable: NodeODM routes are held, then dropped; operator routes answer 503 at once.

A single-module test with the Flask test client and a Redis address nobody listens on; the behaviour through
gunicorn and a real Redis restart is in tests/e2e/test_redis_outage.py.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from flask import Flask

from api.app import HoldDuringOutage, create_app
from odm_farm.redis_server import free_port
from shared.settings import Settings

HOLD = 1.0


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    env = {"ODM_FARM_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "ODM_FARM_DATA_DIR": str(tmp_path)}
    app = create_app(Settings.from_env(env), check_store=False)
    assert isinstance(app.wsgi_app, HoldDuringOutage)
    app.wsgi_app.hold_seconds = HOLD  # the real budget is 20 s
    return app


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/info"),
        ("GET", "/task/list"),
        ("POST", "/task/new/init"),
        ("POST", "/task/cancel?uuid=3f1b8a52-6f0e-4c4b-9a57-2d1d8b1f7c11"),
    ],
)
def test_a_nodeodm_route_is_held_for_the_budget_then_dropped_without_an_answer(
    app: Flask, method: str, path: str
) -> None:
    start = time.monotonic()
    with pytest.raises(BrokenPipeError):
        app.test_client().open(path, method=method)
    assert HOLD <= time.monotonic() - start < HOLD + 1.5


def test_the_client_socket_is_shut_down(app: Flask) -> None:
    server, client = socket.socketpair()
    with pytest.raises(BrokenPipeError):
        app.test_client().get("/task/list", environ_base={"gunicorn.socket": server})
    client.settimeout(2)
    assert client.recv(100) == b"", "the client reads the end of the connection, not an answer"
    server.close()
    client.close()


@pytest.mark.parametrize("path", ["/ready", "/metrics", "/workers", "/farm"])
def test_operator_routes_answer_503_at_once(app: Flask, path: str) -> None:
    start = time.monotonic()
    response = app.test_client().get(path)
    assert response.status_code == 503
    assert time.monotonic() - start < 2.0


def test_routes_without_redis_answer_during_the_outage(app: Flask) -> None:
    assert app.test_client().get("/swagger.json").status_code == 200
    assert app.test_client().get("/health").get_json() == {"status": "ok"}, "liveness: the process answers"
    ready = app.test_client().get("/ready")
    assert ready.status_code == 503 and ready.get_json()["failed"] == ["redis", "workers"]
    assert app.test_client().get("/auth/info").get_json()["loginUrl"] is None
    page = app.test_client().get("/")  # the web app loads, then tells the user that updates fail
    assert page.status_code == 200 and page.mimetype == "text/html"
