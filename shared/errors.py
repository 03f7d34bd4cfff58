"""Client-facing errors. The API maps them, in one place, to the NodeODM error form.

Errors::

    FarmError               any error a client should read ({"error": message})
    ├── TaskNotFound        an unknown task uuid ("<uuid> not found")
    ├── InvalidRequest      malformed input; no_retry tells clients not to send it again
    ├── Unauthorized        a missing or wrong token
    └── Unavailable         a dependency (Redis, object store) is down; clients should retry
"""

from __future__ import annotations


class FarmError(Exception):
    no_retry = False

    def __init__(self, message: str, *, no_retry: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if no_retry is not None:
            self.no_retry = no_retry


class TaskNotFound(FarmError):
    def __init__(self, uuid: str) -> None:
        super().__init__(f"{uuid} not found")
        self.uuid = uuid


class InvalidRequest(FarmError):
    pass


class Unauthorized(FarmError):
    def __init__(self) -> None:
        super().__init__("Invalid authentication token: token does not match.")


class Unavailable(FarmError):
    pass
