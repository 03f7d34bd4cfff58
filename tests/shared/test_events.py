"""Task events in the logs: one key=value line or one JSON object per event, secrets masked in both."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from shared import events


@pytest.fixture
def root_stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    stream = io.StringIO()
    root.handlers = [logging.StreamHandler(stream)]
    yield stream
    root.handlers, root.level = saved, level


def test_plain_lines_are_key_value_with_quoted_values(root_stream: io.StringIO) -> None:
    events.configure("plain", ["tok-secret-1"])
    log = logging.getLogger("test-events")
    events.event(log, "task.finished", uuid="u-1", worker="w1", outcome="failed", reason="Exit code 1 (see x)",
                 extra=None)
    line = root_stream.getvalue().strip()
    assert line.endswith('test-events: event=task.finished uuid=u-1 worker=w1 outcome=failed '
                         'reason="Exit code 1 (see x)"')
    assert "extra" not in line


def test_json_lines_carry_the_event_fields_and_mask_secrets(root_stream: io.StringIO) -> None:
    events.configure("json", ["tok-secret-1"])
    log = logging.getLogger("test-events")
    events.event(log, "webhook.failed", uuid="u-2", worker="w1", url="http://h/hook?token=tok-secret-1", attempt=1)
    log.warning("plain message with tok-secret-1 and https://user:pa55word@host/x")
    first, second = (json.loads(line) for line in root_stream.getvalue().splitlines())
    assert first["event"] == "webhook.failed" and first["uuid"] == "u-2" and first["worker"] == "w1"
    assert first["attempt"] == 1 and first["level"] == "INFO" and first["logger"] == "test-events"
    assert "tok-secret-1" not in first["url"] and first["url"].startswith("http://h/hook?token=")
    assert "event" not in second and second["level"] == "WARNING"
    assert "tok-secret-1" not in second["message"] and "pa55word" not in second["message"]
