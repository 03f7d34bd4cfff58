"""HTTP sessions for user-given URLs (zipurl, webhooks) that refuse to connect to a blocked address.

`check_url` resolves a host before the request; the HTTP client resolves it again when it connects, and
a hostile DNS server can answer differently the second time (DNS rebinding). These sessions therefore
check the address each socket actually connected to, before a single byte is sent.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from shared.safety import IPNetwork, UnsafeUrl, address_blocked, parse_networks

USER_AGENT = "odm-farm"


def _guarded_pools(networks: list[IPNetwork]) -> dict[str, type[HTTPConnectionPool]]:
    class PeerCheck:
        def _new_conn(self) -> socket.socket:
            sock: socket.socket = super()._new_conn()  # type: ignore[misc]
            try:
                peer = sock.getpeername()[0]
                reason = address_blocked(peer, networks)
            except (OSError, ValueError) as exc:
                reason = f"peer address unknown ({exc})"
            if reason:
                sock.close()
                raise UnsafeUrl(f"Connection to {self.host} is not allowed: {reason}.")  # type: ignore[attr-defined]
            return sock

    class GuardedHTTPConnection(PeerCheck, HTTPConnection):
        pass

    class GuardedHTTPSConnection(PeerCheck, HTTPSConnection):
        pass

    class GuardedHTTPPool(HTTPConnectionPool):
        ConnectionCls = GuardedHTTPConnection

    class GuardedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = GuardedHTTPSConnection

    return {"http": GuardedHTTPPool, "https": GuardedHTTPSPool}


class GuardedAdapter(HTTPAdapter):
    """A requests adapter whose connections (direct or through a proxy) check their peer address."""

    def __init__(self, blocked_networks: Iterable[str | IPNetwork], **kwargs: Any) -> None:
        self._pools = _guarded_pools(parse_networks(blocked_networks))
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = self._pools

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = self._pools
        return manager


def guarded_session(blocked_networks: Iterable[str | IPNetwork]) -> requests.Session:
    """A requests session that raises UnsafeUrl instead of connecting to a blocked address."""
    session = requests.Session()
    adapter = GuardedAdapter(blocked_networks)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session
