"""Riding out a Redis restart: a redis-py Retry bounded by time, with one time budget per request.

A Redis restart (with its AOF reload) takes seconds to a minute. Clients fail a task on a 5xx but retry a
slow answer or a dropped connection, so a Redis command is retried until Redis answers or the budget is
spent. The budget is counted from the first failure and shared by every command of one scope (the API
opens a scope per request, see api/app.py), so a request is held at most HOLD_SECONDS in all, however many
commands it runs; outside a scope, each outermost command gets the whole budget.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

T = TypeVar("T")

# under PyODM's 30 s per-request timeout, with room for the rest of the request
HOLD_SECONDS = 20.0
# the longest pause between two attempts: how late a held request notices that Redis is back
MAX_PAUSE = 0.5

RETRIED_ERRORS = (redis.ConnectionError, redis.TimeoutError, socket.timeout)


class Hold:
    """The time budget of one scope: starts at its first failure."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline: float | None = None
        self.failed = False  # a command of this scope met an outage (even if a retry then succeeded)

    def remaining(self) -> float:
        if self.deadline is None:
            self.deadline = time.monotonic() + self.seconds
        return self.deadline - time.monotonic()


_scope: ContextVar[Hold | None] = ContextVar("odm_farm_redis_hold", default=None)


@contextlib.contextmanager
def hold_scope(seconds: float = HOLD_SECONDS) -> Iterator[Hold]:
    """Every Redis command run inside shares one budget of `seconds` (one request of the API)."""
    hold = Hold(seconds)
    token = _scope.set(hold)
    try:
        yield hold
    finally:
        _scope.reset(token)


def current_hold() -> Hold | None:
    return _scope.get()


class OutageRetry(Retry):
    """Retries connection errors with a short backoff until the scope's time budget is spent."""

    def __init__(self, seconds: float = HOLD_SECONDS) -> None:
        super().__init__(
            ExponentialBackoff(cap=MAX_PAUSE, base=0.05), retries=-1, supported_errors=RETRIED_ERRORS
        )
        self.seconds = seconds

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, OutageRetry) and other.seconds == self.seconds

    __hash__ = Retry.__hash__

    def call_with_retry(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        hold = _scope.get()
        token = None
        if (
            hold is None
        ):  # redis-py nests retries (command around connect): the outermost call owns the budget
            hold = Hold(self.seconds)
            token = _scope.set(hold)
        try:
            failures = 0
            while True:
                try:
                    return do()
                except RETRIED_ERRORS as error:
                    if is_retryable and not is_retryable(error):
                        raise
                    failures += 1
                    hold.failed = True
                    if with_failure_count:
                        fail(error, failures)
                    else:
                        fail(error)
                    left = hold.remaining()
                    if left <= 0:
                        raise
                    time.sleep(min(self._backoff.compute(failures), left))
        finally:
            if token is not None:
                _scope.reset(token)
