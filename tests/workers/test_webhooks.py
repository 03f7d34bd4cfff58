"""Webhooks: any 2xx delivers, other answers and errors are retried with backoff, blocked URLs never called."""

from __future__ import annotations

import json
import logging

import pytest

from shared.settings import Settings
from tests.support.local_http import local_server, reply
from workers.webhooks import send_webhook

DEFAULT_BLOCKED = Settings().blocked_networks
PAYLOAD = {"uuid": "b754", "status": {"code": 40}, "images": ["a.jpg"]}


def scripted(statuses: list[int]):
    def route(handler) -> None:
        reply(handler, statuses.pop(0) if statuses else 200, b"{}")

    return route


def test_retries_after_a_500_then_succeeds_on_201() -> None:
    sleeps: list[float] = []
    with local_server() as server:
        server.routes["/hook"] = scripted([500, 201])
        assert send_webhook(server.url("/hook"), PAYLOAD, DEFAULT_BLOCKED, sleep=sleeps.append) is True
    assert sleeps == [1.0]
    assert [r.method for r in server.received] == ["POST", "POST"]
    assert json.loads(server.received[1].body) == PAYLOAD
    assert server.received[1].headers["Content-Type"] == "application/json"


def test_204_counts_as_delivered() -> None:
    sleeps: list[float] = []
    with local_server() as server:
        server.routes["/hook"] = scripted([204])
        assert send_webhook(server.url("/hook"), PAYLOAD, DEFAULT_BLOCKED, sleep=sleeps.append) is True
    assert sleeps == []
    assert len(server.received) == 1


def test_gives_up_after_the_attempts_with_exponential_backoff(caplog: pytest.LogCaptureFixture) -> None:
    sleeps: list[float] = []
    with local_server() as server, caplog.at_level(logging.WARNING, "workers.webhooks"):
        server.routes["/hook"] = scripted([500, 503, 302, 404])
        ok = send_webhook(
            server.url("/hook"), PAYLOAD, DEFAULT_BLOCKED, retries=4, backoff=0.5, sleep=sleeps.append
        )
    assert ok is False
    assert sleeps == [0.5, 1.0, 2.0]
    assert len(server.received) == 4
    assert "failed after 4 attempts (HTTP 404)" in caplog.text


def test_connection_errors_are_retried() -> None:
    with local_server() as server:
        port = server.port
    sleeps: list[float] = []
    assert (
        send_webhook(
            f"http://127.0.0.1:{port}/hook", PAYLOAD, DEFAULT_BLOCKED, retries=3, sleep=sleeps.append
        )
        is False
    )
    assert sleeps == [1.0, 2.0]


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "file:///etc/passwd",
        "http://[::ffff:169.254.169.254]/",
        "nonsense",
    ],
)
def test_unsafe_urls_are_never_called(url: str, caplog: pytest.LogCaptureFixture) -> None:
    sleeps: list[float] = []
    with caplog.at_level(logging.WARNING, "workers.webhooks"):
        assert send_webhook(url, PAYLOAD, DEFAULT_BLOCKED, sleep=sleeps.append) is False
    assert sleeps == []
    assert "not allowed" in caplog.text


def test_a_blocked_loopback_receiver_gets_nothing() -> None:
    with local_server() as server:
        server.routes["/hook"] = scripted([200])
        assert send_webhook(server.url("/hook"), PAYLOAD, ["127.0.0.0/8"], sleep=lambda s: None) is False
    assert server.received == []


def test_a_payload_that_is_not_json_is_not_sent() -> None:
    with local_server() as server:
        assert (
            send_webhook(server.url("/hook"), {"bad": object()}, DEFAULT_BLOCKED, sleep=lambda s: None)
            is False
        )
    assert server.received == []
