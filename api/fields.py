"""Request fields as text: NodeODM bodies arrive urlencoded, multipart or JSON, and all are read the same way."""

from __future__ import annotations

import json
from typing import Any

from flask import request

from shared.errors import InvalidRequest

TOO_DEEP = "Malformed request: the JSON body is nested too deeply."


def text_fields(data: Any) -> dict[str, str]:
    """A JSON body as form-like fields: strings kept, anything else (numbers, lists) as its JSON text."""
    if not isinstance(data, dict):
        raise InvalidRequest("Malformed request: the JSON body must be an object.", no_retry=True)
    try:
        return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}
    except RecursionError:
        raise InvalidRequest(TOO_DEEP, no_retry=True) from None


def json_fields() -> dict[str, str]:
    try:
        data = request.get_json(silent=True)
    except RecursionError:  # silent covers malformed JSON only; Python's parser refuses deep nesting this way
        raise InvalidRequest(TOO_DEEP, no_retry=True) from None
    if data is None:
        raise InvalidRequest("Malformed request: the body is not valid JSON.", no_retry=True)
    return text_fields(data)


def form_fields() -> dict[str, str]:
    """Fields of a body without files (init, cancel, remove, restart)."""
    if request.is_json:
        return json_fields()
    return {k: request.form.get(k, "") for k in request.form}
