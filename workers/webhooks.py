"""Webhook delivery: one POST of a finished task's info as JSON (the outbox in shared/outbox.py schedules retries)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import requests

from shared.safety import IPNetwork, UnsafeUrl, check_url, redact_url
from workers.outbound import guarded_session

log = logging.getLogger(__name__)

MAX_BACKOFF = 300.0


def send_webhook(
    url: str,
    payload: dict[str, Any],
    blocked_networks: Iterable[str | IPNetwork],
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 10,
    sleep: Callable[[float], Any] = time.sleep,
    on_failure: Callable[[str], Any] | None = None,
) -> bool:
    """POST `payload` to `url`; True once any 2xx answer arrives (else `on_failure` hears why, in a word).

    `retries` is the number of attempts (at least 1); between attempts it waits backoff, 2*backoff,
    4*backoff... (capped at MAX_BACKOFF). A URL refused by the block list is logged and never called.
    Redirects are not followed: each hop would need the same check, and receivers do not redirect.
    """
    networks = list(blocked_networks)
    shown = redact_url(url)
    try:
        check_url(url, networks)
    except UnsafeUrl as exc:
        log.warning("webhook not sent: %s", exc)
        return _failed(on_failure, str(exc))
    try:
        body = json.dumps(payload).encode("utf-8")
    except (TypeError, ValueError) as exc:
        log.error("webhook %s not sent: payload cannot be encoded as JSON (%s)", shown, exc)
        return _failed(on_failure, "payload not JSON")
    headers = {"Content-Type": "application/json"}
    attempts = max(1, retries)
    with guarded_session(networks) as session:
        for attempt in range(1, attempts + 1):
            try:
                response = session.post(
                    url, data=body, headers=headers, timeout=timeout, allow_redirects=False
                )
                response.close()
                if 200 <= response.status_code < 300:
                    log.info("webhook %s delivered (HTTP %s)", shown, response.status_code)
                    return True
                problem = f"HTTP {response.status_code}"
            except UnsafeUrl as exc:
                log.warning("webhook not sent: %s", exc)
                return _failed(on_failure, str(exc))
            except requests.RequestException as exc:
                problem = type(exc).__name__
            if attempt < attempts:
                delay = min(MAX_BACKOFF, backoff * 2 ** (attempt - 1))
                log.warning(
                    "webhook %s attempt %d/%d failed (%s); retrying in %gs",
                    shown,
                    attempt,
                    attempts,
                    problem,
                    delay,
                )
                sleep(delay)
            else:
                log.error("webhook %s failed after %d attempts (%s)", shown, attempts, problem)
    return _failed(on_failure, problem)


def _failed(on_failure: Callable[[str], Any] | None, problem: str) -> bool:
    if on_failure is not None:
        on_failure(problem)
    return False
