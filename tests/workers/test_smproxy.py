"""The split-merge proxy: forwards to the public URL with the token added, streams large bodies both ways."""

from __future__ import annotations

import os
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest
import requests

from tests.support.local_http import LocalServer, local_server, reply
from workers.smproxy import ClusterProxy

BIG = os.urandom(24 * 1024 * 1024)


@pytest.fixture
def upstream() -> Iterator[LocalServer]:
    with local_server() as server:
        yield server


@pytest.fixture
def proxy(upstream: LocalServer) -> Iterator[ClusterProxy]:
    proxy = ClusterProxy(upstream.url("/farm/").replace("http://", "http://admin:pw@"), "the-token")
    proxy.start()
    yield proxy
    proxy.stop()


def test_requests_reach_the_farm_with_the_token_and_large_bodies_stream_both_ways(
    upstream: LocalServer, proxy: ClusterProxy
) -> None:
    seen_queries: list[str] = []

    def echo(handler: BaseHTTPRequestHandler) -> None:
        seen_queries.append(handler.path.split("?", 1)[1])
        reply(handler, 200, upstream.received[-1].body, {"Content-Type": "application/octet-stream"})

    upstream.routes["/farm/task/new/upload/abc"] = echo
    assert "token" not in proxy.url
    answer = requests.post(f"{proxy.url}/task/new/upload/abc?token=wrong&x=1", data=BIG, timeout=60)
    assert answer.status_code == 200 and answer.content == BIG
    assert seen_queries == ["x=1&token=the-token"], "the token is set by the proxy, any other is replaced"
    received = upstream.received[-1]
    assert received.body == BIG and received.headers["Host"] == f"127.0.0.1:{upstream.port}"
    assert received.headers["Authorization"].startswith("Basic "), "credentials of the public URL are sent"

    def chunks() -> Iterator[bytes]:  # a body without Content-Length (chunked), as a streaming client sends
        for i in range(0, len(BIG), 1 << 20):
            yield BIG[i : i + (1 << 20)]

    def dechunk(handler: BaseHTTPRequestHandler) -> None:
        assert handler.headers["Transfer-Encoding"] == "chunked"
        body = b""
        while size := int(handler.rfile.readline().strip(), 16):
            body += handler.rfile.read(size)
            handler.rfile.readline()
        handler.rfile.readline()
        reply(handler, 200, body)

    upstream.routes["/farm/task/new/upload/chunked"] = dechunk
    answer = requests.post(f"{proxy.url}/task/new/upload/chunked", data=chunks(), timeout=60)
    assert answer.status_code == 200 and answer.content == BIG


def test_only_the_nodeodm_routes_are_forwarded(upstream: LocalServer, proxy: ClusterProxy) -> None:
    upstream.routes["/farm/workers"] = lambda h: reply(h, 200, b"[]")
    upstream.routes["/farm/info"] = lambda h: reply(h, 200, b'{"engine": "odm"}')
    assert requests.get(f"{proxy.url}/workers", timeout=10).status_code == 404
    assert requests.get(f"{proxy.url}/info", timeout=10).json() == {"engine": "odm"}
    assert [r.path for r in upstream.received] == ["/farm/info"]


def test_an_unreachable_farm_is_a_502_not_a_hang() -> None:
    proxy = ClusterProxy("http://127.0.0.1:9", "t")
    proxy.start()
    try:
        answer = requests.get(f"{proxy.url}/info", timeout=10)
        assert answer.status_code == 502 and "error" in answer.json()
    finally:
        proxy.stop()
