"""The split-merge proxy: a loopback-only HTTP forwarder that adds the node token, so ODM never sees it.

ODM's split-merge (PyODM underneath) sends submodels to the URL given as `--sm-cluster`. Giving it the farm's
public URL with `?token=` puts the token on the engine's command line (visible in `ps`), in ODM's console
banner and so in `task_output.txt`. Instead each worker runs this proxy on 127.0.0.1 and gives ODM
`http://127.0.0.1:<port>`; the proxy forwards to ODM_FARM_PUBLIC_URL, setting the token itself, and streams
bodies both ways (submodel uploads and result downloads can be gigabytes).

With user accounts, the submodels of a user's task must be that user's: each such run registers here and gets
its own key, which ODM passes as `?token=` (only this proxy knows it); the proxy forwards the run's requests
with the node token and OWNER_HEADER naming the user, which the API trusts only with the node token. A key
ends with its run; a request without a known key is forwarded as before, with the node token alone.

Only the NodeODM routes split-merge uses are forwarded (`/info`, `/options`, `/task/...`), so the proxy is not a
general door into the farm for other programs on the host.
"""

from __future__ import annotations

import http.client
import logging
import secrets
import threading
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
TIMEOUT = 600.0  # a commit or a large download may take long; PyODM has its own, shorter timeouts
ALLOWED_PREFIXES = ("/info", "/options", "/task/")
OWNER_HEADER = "X-Odm-Farm-Owner"  # the same name as api.app.OWNER_HEADER (workers never import api)
# hop-by-hop headers (RFC 9110 7.6.1) are the proxy's own business on each side
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",  # this server already answered 100-continue to the client
    "host",
}


class ClusterProxy:
    """Forwards 127.0.0.1:<port>/<path> to <public_url>/<path>?token=<token>. Start once, stop at shutdown."""

    def __init__(self, public_url: str, token: str) -> None:
        target = urlsplit(public_url.rstrip("/"))
        if target.scheme not in ("http", "https") or not target.hostname:
            raise ValueError("ODM_FARM_PUBLIC_URL must be an http(s) URL")
        self.target = target
        self.token = token
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None
        self._owners: dict[str, str] = {}  # run key -> user
        self._keys: dict[str, str] = {}  # run id -> run key
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """What ODM gets as --sm-cluster: no token, nothing secret."""
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def url_for(self, run_id: str, owner: str | None) -> str:
        """The --sm-cluster URL for one run: a run of a user's task gets a key naming that user here."""
        if not owner:
            return self.url
        key = secrets.token_urlsafe(24)
        with self._lock:
            self._owners[key] = owner
            self._keys[run_id] = key
        return f"{self.url}/?token={key}"

    def release(self, run_id: str) -> None:
        with self._lock:
            key = self._keys.pop(run_id, None)
            if key:
                self._owners.pop(key, None)

    def owner_of(self, path: str) -> str:
        """The user of the run whose key the request carries; '' without a known key."""
        given = next((v for k, v in parse_qsl(urlsplit(path).query) if k == "token"), "")
        with self._lock:
            return self._owners.get(given, "") if given else ""

    def start(self) -> None:
        self._thread = threading.Thread(target=self.server.serve_forever, name="sm-proxy", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def upstream(self) -> http.client.HTTPConnection:
        port = self.target.port
        host = self.target.hostname or ""
        if self.target.scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=TIMEOUT)
        return http.client.HTTPConnection(host, port, timeout=TIMEOUT)

    def upstream_path(self, path: str) -> str:
        """The request's path under the public URL's path, with the token set (any token given is replaced)."""
        parts = urlsplit(path)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "token"]
        if self.token:
            query.append(("token", self.token))
        return urlunsplit(("", "", self.target.path + parts.path, urlencode(query), ""))

    def upstream_headers(self, headers: Message, owner: str = "") -> dict[str, str]:
        out = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP | {OWNER_HEADER.lower()}}
        if owner:
            out[OWNER_HEADER] = owner
        out["Host"] = self.target.netloc.rsplit("@", 1)[-1]
        if self.target.username is not None:
            import base64

            pair = f"{self.target.username}:{self.target.password or ''}".encode()
            out["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        return out


def _handler_for(proxy: ClusterProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            if not urlsplit(self.path).path.startswith(ALLOWED_PREFIXES):
                self._answer(404, b'{"error": "Not a split-merge route"}')
                return
            owner = proxy.owner_of(self.path)
            conn = proxy.upstream()
            try:
                conn.putrequest(
                    self.command, proxy.upstream_path(self.path), skip_host=True, skip_accept_encoding=True
                )
                headers = proxy.upstream_headers(self.headers, owner)
                chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
                if chunked:
                    headers["Transfer-Encoding"] = "chunked"
                for name, value in headers.items():
                    conn.putheader(name, value)
                conn.endheaders()
                if chunked:
                    self._relay_chunked(conn)
                else:
                    self._relay_body(conn, int(self.headers.get("Content-Length") or 0))
                response = conn.getresponse()
                self._relay_response(response)
            except (OSError, http.client.HTTPException) as exc:
                # no URL in the message: the public URL may carry credentials
                log.warning(
                    "split-merge proxy: %s %s failed: %s",
                    self.command,
                    urlsplit(self.path).path,
                    type(exc).__name__,
                )
                self.close_connection = True
                if not getattr(self, "_answered", False):
                    self._answer(502, b'{"error": "The farm cannot be reached from this worker"}')
            finally:
                conn.close()

        def _relay_body(self, conn: http.client.HTTPConnection, length: int) -> None:
            while length > 0:
                data = self.rfile.read(min(CHUNK, length))
                if not data:
                    raise ConnectionError("client closed the request body early")
                conn.send(data)
                length -= len(data)

        def _relay_chunked(self, conn: http.client.HTTPConnection) -> None:
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    conn.send(b"0\r\n\r\n")
                    return
                data = self.rfile.read(size)
                self.rfile.readline()
                conn.send(b"%x\r\n%s\r\n" % (len(data), data))

        def _relay_response(self, response: http.client.HTTPResponse) -> None:
            self._answered = True
            self.send_response_only(response.status, response.reason)
            length = response.getheader("Content-Length")
            for name, value in response.getheaders():
                if name.lower() not in HOP_BY_HOP:
                    self.send_header(name, value)
            if length is None:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command == "HEAD":
                return
            while True:
                data = response.read(CHUNK)
                if not data:
                    break
                self.wfile.write(data)
            self.wfile.flush()

        def _answer(self, status: int, body: bytes) -> None:
            self._answered = True
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _forward

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            pass  # request lines hold task ids only, but keep the worker log quiet

    return Handler
