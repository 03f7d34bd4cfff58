"""The web app at /: one HTML page and its ES modules and CSS, vendored in api/web/static (no CDN, no build).

Assets are served under /web/<version>/..., where <version> is a digest of every asset: the page always
names the current version, so assets may be cached for a year; the modules import each other by relative
paths, which keeps them under the same version. The page itself is revalidated on every load (ETag).
"""

from __future__ import annotations

import hashlib
import mimetypes
from functools import cache
from pathlib import Path

from flask import Blueprint, Response, abort, request

bp = Blueprint("web", __name__)

STATIC = Path(__file__).resolve().parent / "static"
YEAR = 365 * 24 * 3600
TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".html": "text/html"}


@cache
def assets() -> dict[str, bytes]:
    """Every asset by its path relative to the static folder (read once: they ship with the package)."""
    return {
        path.relative_to(STATIC).as_posix(): path.read_bytes()
        for path in sorted(STATIC.rglob("*"))
        if path.is_file() and path.name != "index.html"
    }


@cache
def version() -> str:
    digest = hashlib.sha256()
    for name, body in assets().items():
        digest.update(name.encode() + b"\0" + hashlib.sha256(body).digest())
    return digest.hexdigest()[:12]


@cache
def page() -> bytes:
    return (STATIC / "index.html").read_text().replace("{{version}}", version()).encode()


@bp.get("/")
def index():
    body = page()
    response = Response(body, mimetype="text/html")
    response.headers["Cache-Control"] = "no-cache"
    response.set_etag(hashlib.sha256(body).hexdigest()[:16])
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'self'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response.make_conditional(request)


@bp.get("/web/<version_id>/<path:name>")
def asset(version_id: str, name: str):
    body = assets().get(name)
    if body is None:
        abort(404, description=f"No such asset: {name[:100]}")
    suffix = Path(name).suffix
    mimetype = TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
    response = Response(body, mimetype=mimetype)
    # another version's URL (a page loaded before an upgrade) gets today's file, never cached for long
    current = version_id == version()
    response.headers["Cache-Control"] = f"public, max-age={YEAR}, immutable" if current else "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.set_etag(hashlib.sha256(body).hexdigest()[:16])
    return response.make_conditional(request)
