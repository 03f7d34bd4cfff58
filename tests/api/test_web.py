"""The web app's page and assets as Flask serves them: no CDN, cache headers, package data (no Redis needed)."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

from flask import Flask

from api import web

ROOT = Path(__file__).resolve().parents[2]


def test_the_page_names_only_local_assets_of_the_current_version(app: Flask) -> None:
    page = app.test_client().get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    links = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert links and all(link.startswith(f"/web/{web.version()}/") for link in links), links
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"] == "no-cache"
    assert app.test_client().get("/", headers={"If-None-Match": page.headers["ETag"]}).status_code == 304


def test_assets_are_cached_for_a_year_under_their_version_only(app: Flask) -> None:
    client = app.test_client()
    current = client.get(f"/web/{web.version()}/js/app.js")
    assert current.status_code == 200 and current.mimetype == "text/javascript"
    assert current.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    css = client.get(f"/web/{web.version()}/app.css")
    assert css.mimetype == "text/css"
    stale = client.get("/web/0123456789ab/js/app.js")  # a page loaded before an upgrade
    assert stale.status_code == 200 and stale.headers["Cache-Control"] == "no-cache"
    assert stale.data == current.data
    for name in ("nope.js", "../__init__.py", "index.html", "js/../../__init__.py"):
        missing = client.get(f"/web/{web.version()}/{name}")
        assert missing.status_code == 404 and "error" in missing.get_json(), name


def test_every_module_import_is_relative_and_exists() -> None:
    """Imports stay under the versioned folder (relative) and name files that ship."""
    names = set(web.assets())
    for name, body in web.assets().items():
        if name.endswith(".js"):
            for target in re.findall(r'from "([^"]+)"', body.decode()):
                assert target.startswith("./"), (name, target)
                assert (Path(name).parent / target[2:]).as_posix() in names, (name, target)


def test_the_package_data_ships_every_asset() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "api"
    ]
    static = ROOT / "api" / "web" / "static"
    for path in static.rglob("*"):
        if path.is_file():
            relative = path.relative_to(ROOT / "api").as_posix()
            assert any(
                fnmatch.fnmatch(relative, p) and relative.count("/") == p.count("/") for p in patterns
            ), relative


def test_no_module_writes_html_from_strings() -> None:
    """Server text reaches the page through textContent and attributes only (an XSS test covers the rest)."""
    for name, body in web.assets().items():
        if name.endswith(".js"):
            text = body.decode()
            for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
                assert sink not in text, (name, sink)
