"""Masking secrets in text and log lines: known values, URL passwords, secret query values."""

from __future__ import annotations

import io
import logging

from shared.safety import redact_handlers, redact_text


def test_known_secrets_url_passwords_and_secret_queries_are_masked() -> None:
    line = ("--sm-cluster http://farm:3000/?token=abc123&x=1 redis://:pw@h:6379/0 "
            "https://user:pa55@s3/b/k?X-Amz-Signature=ff00&X-Amz-Credential=AKIA/1 key AKIAEXAMPLE")
    masked = redact_text(line, ["AKIAEXAMPLE", ""])
    for secret in ("abc123", ":pw@", "pa55", "ff00", "AKIA/1", "AKIAEXAMPLE"):
        assert secret not in masked, secret
    assert "token=***&x=1" in masked and "redis://:***@h:6379/0" in masked and "https://user:***@s3" in masked


def test_short_secrets_do_not_mask_ordinary_text() -> None:
    assert redact_text("started processing", ["t", "ab"]) == "started processing"


def test_log_handlers_mask_formatted_lines_including_tracebacks() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("test-redaction")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    try:
        redact_handlers(logger, ["s3cr3t-key"])
        redact_handlers(logger, ["s3cr3t-key"])  # idempotent
        try:
            raise ValueError("bad key s3cr3t-key")
        except ValueError:
            logger.exception("GET /info?token=%s failed", "tok123")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "s3cr3t-key" not in text and "tok123" not in text
    assert text.startswith("ERROR GET /info?token=*** failed") and "ValueError: bad key ***" in text
