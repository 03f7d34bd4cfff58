"""/swagger.json describes every route of the app, and only routes that exist (so it cannot drift)."""

from __future__ import annotations

import re
from typing import Any

from flask import Flask

IGNORED_METHODS = {"OPTIONS", "HEAD"}  # Flask adds both to every GET route


def openapi_path(rule: str) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule)


def described(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (path, method.upper())
        for path, item in spec["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete", "head")
    }


def routes(app: Flask) -> set[tuple[str, str]]:
    return {
        (openapi_path(rule.rule), method)
        for rule in app.url_map.iter_rules()
        for method in (rule.methods or set()) - IGNORED_METHODS
    }


def test_swagger_json_is_served_without_a_token(app: Flask) -> None:
    response = app.test_client().get("/swagger.json")
    assert response.status_code == 200 and response.is_json
    spec = response.get_json()
    assert spec["openapi"].startswith("3.")
    assert spec["components"]["securitySchemes"]["token"] == {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": "the node's token (ODM_FARM_TOKEN)",
    }


def test_every_route_is_described_and_nothing_else(app: Flask) -> None:
    spec = app.test_client().get("/swagger.json").get_json()
    assert routes(app) - described(spec) == set(), "routes missing from api/openapi.py"
    assert {(p, m) for p, m in described(spec) if m != "HEAD"} - routes(app) == set(), (
        "described but not served"
    )


def test_path_parameters_match_the_routes(app: Flask) -> None:
    spec = app.test_client().get("/swagger.json").get_json()
    for path, item in spec["paths"].items():
        in_path = set(re.findall(r"{(\w+)}", path))
        for method, operation in item.items():
            if method == "parameters":
                continue
            params = [*item.get("parameters", []), *operation.get("parameters", [])]
            declared = {p["name"] for p in params if p["in"] == "path"}
            assert declared == in_path, (path, method)


def test_every_reference_resolves(app: Flask) -> None:
    spec = app.test_client().get("/swagger.json").get_json()
    refs = re.findall(r'"\$ref": ?"#/components/schemas/(\w+)"', app.json.dumps(spec))
    assert refs and set(refs) <= set(spec["components"]["schemas"])


def test_nodeodm_errors_are_described_at_http_200(app: Flask) -> None:
    """A client reading the description must see that errors come as 200 {"error": ...}, as it gets them."""
    client = app.test_client()
    spec = client.get("/swagger.json").get_json()
    error = spec["components"]["schemas"]["Error"]
    assert error["required"] == ["error"] and set(error["properties"]) == {"error", "success", "noRetry"}
    wrong_token = client.get("/task/list", query_string={"token": "wrong"}).get_json()
    assert set(wrong_token) <= set(error["properties"])
    for path in ("/info", "/options", "/task/list", "/task/{uuid}/info", "/task/new/init", "/task/cancel"):
        operation = next(iter(spec["paths"][path].values()))
        body = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert {"$ref": "#/components/schemas/Error"} in body["anyOf"], path
