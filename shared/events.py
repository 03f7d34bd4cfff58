"""Structured task events in the logs: one line per event, plain `key=value` text or JSON lines.

`event(log, "task.claimed", uuid=..., worker=..., run=...)` writes one INFO record; the API and the workers
install `configure(settings)` on the root logger, which picks the format (ODM_FARM_LOG_FORMAT) and masks every
secret the node knows in every line (shared.safety), events and library messages alike.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from shared.safety import RedactingFormatter, redact_text

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_EVENT = "odm_farm_event"
_FIELDS = "odm_farm_fields"


def event(log: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log the event `name` with its fields (None values left out); never raises for an odd value."""
    shown = {k: v for k, v in fields.items() if v is not None}
    text = " ".join([f"event={name}", *(f"{k}={_plain(v)}" for k, v in shown.items())])
    log.log(level, "%s", text, extra={_EVENT: name, _FIELDS: shown})


def _plain(value: Any) -> str:
    text = str(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text)  # quoted, so that a reason with spaces stays one value
    return text


class JsonFormatter(RedactingFormatter):
    """One JSON object per line: time, level, logger, message, and for events `event` plus its fields.

    Secrets are masked in each value before encoding (masking the encoded line could eat an escape and
    break the JSON); being a RedactingFormatter, redact_handlers leaves it as it is.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__(None, secrets)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
        }
        name = getattr(record, _EVENT, None)
        if name:
            entry["event"] = name
            for key, value in getattr(record, _FIELDS, {}).items():
                entry.setdefault(key, value)
        entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        masked = {k: redact_text(v, self.secrets) if isinstance(v, str) else v for k, v in entry.items()}
        return json.dumps(masked, default=lambda v: redact_text(str(v), self.secrets))


def formatter(log_format: str, secrets: Iterable[str] = ()) -> RedactingFormatter:
    """The masking formatter for `log_format` (plain or json)."""
    if log_format == "json":
        return JsonFormatter(secrets)
    return RedactingFormatter(logging.Formatter(PLAIN_FORMAT), secrets)


def configure(log_format: str, secrets: list[str], level: str | int = "INFO") -> None:
    """The root logger writes to stderr in `log_format` (plain or json), every line masked."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    root.setLevel(level)
    for handler in root.handlers:
        handler.setFormatter(formatter(log_format, secrets))


__all__ = ["event", "configure", "formatter", "JsonFormatter"]
