"""The NodeODM client behind `odm-farm submit/tasks/info/logs/...`: any NodeODM API (this farm, NodeODM, ClusterODM).

PyODM does the API calls; `RemoteNode` teaches it full base URLs (https on any port, a path prefix, a token
or basic-auth user in the URL), which PyODM builds from host and port alone, and refuses answers that are not
JSON. Uploads and downloads, counted in bytes, are in odm_farm/transfer.py. Every failure leaves this module
as a `ClientError` with a one-line message that never holds the token or a URL password.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import os
import re
import select
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
from pyodm import Node
from pyodm.api import Task
from pyodm.exceptions import NodeConnectionError, NodeResponseError, NodeServerError, OdmError
from pyodm.types import TaskStatus

from shared.options import InvalidOptions, validate_options

URL_VARIABLE = "ODM_FARM_URL"
TOKEN_VARIABLE = "ODM_FARM_TOKEN"  # the farm's own token setting: on the farm's host the client just works
DEFAULT_URL = "http://127.0.0.1:3000"
ENDED = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELED)


class ClientError(Exception):
    """A failure the user can act on; `str()` is the whole message (no traceback is shown)."""


class RemoteNode(Node):
    """A PyODM Node addressed by a full URL (scheme, host, port, path prefix) instead of host and port."""

    def __init__(self, base_url: str, token: str = "", timeout: float = 30) -> None:
        base_url = base_url.strip()
        if re.fullmatch(r"[\w.-]+(:\d+)?(/.*)?", base_url):  # `localhost:3000`, as NodeODM's users type it
            base_url = "http://" + base_url
        try:
            parts = urlsplit(base_url)
            port = parts.port
        except ValueError as exc:
            raise ClientError(f"bad node URL {masked_url(base_url)!r}: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ClientError(f"bad node URL {masked_url(base_url)!r}: expected http(s)://host[:port][/path]")
        # a URL copied from a browser may carry the token (`?token=`): it is the token unless one is given
        token = token or dict(parse_qsl(parts.query)).get("token", "")
        super().__init__(parts.hostname, port or (443 if parts.scheme == "https" else 80), token, timeout)
        self._base = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"  # requests, with credentials
        self.base = masked_url(self._base)  # messages: `user:***@host` (a proxy's basic auth)

    def url(self, url: str, query: dict[str, Any] | None = None) -> str:
        query = dict(query or {})  # PyODM passes a shared default dict
        if self.token:
            query["token"] = self.token
        return self._base + url + (f"?{urlencode(query)}" if query else "")

    # PyODM hands back the raw response when an answer is not JSON, and its Task methods then fail on it
    # (`'Response' object has no attribute 'get'`): a NodeODM API answers JSON, so anything else is an error
    def get(self, url: str, query: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        result = super().get(url, query or {}, **kwargs)
        if isinstance(result, requests.Response) and not kwargs.get("stream"):
            raise ClientError(not_nodeodm(self.base + url, result))
        return result

    def post(self, url: str, data: Any = None, headers: dict[str, str] | None = None) -> Any:
        result = super().post(url, data, headers or {})
        if isinstance(result, requests.Response):
            raise ClientError(not_nodeodm(self.base + url, result))
        return result


def masked_url(url: str) -> str:
    """`url` fit for a message: no password, no query (it may hold the token)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    except ValueError:
        return url.split("?")[0].split("@")[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def not_nodeodm(url: str, response: requests.Response) -> str:
    kind = response.headers.get("Content-Type", "no content type").split(";")[0]
    return f"unexpected answer from {url} (HTTP {response.status_code}, {kind}): is it a NodeODM API?"


def connect(url: str | None, token: str | None, timeout: float = 30) -> RemoteNode:
    return RemoteNode(
        url or os.environ.get(URL_VARIABLE) or DEFAULT_URL,
        os.environ.get(TOKEN_VARIABLE, "") if token is None else token,
        timeout,
    )


@contextlib.contextmanager
def friendly_errors(node: RemoteNode) -> Iterator[None]:
    """Turn PyODM's and requests' exceptions into one-line ClientErrors naming the node (never the token)."""
    try:
        yield
    except ClientError:
        raise
    except (NodeConnectionError, requests.ConnectionError, requests.Timeout) as exc:
        raise ClientError(f"cannot reach the node at {node.base}: {reason(str(exc))}") from None
    except NodeResponseError as exc:
        text = _hide(str(exc), node.token)
        if "authentication token" in text.lower() or "unauthorized" in text.lower():
            how = "wrong token" if node.token else "this node needs a token"
            raise ClientError(
                f"the node at {node.base} refused the request ({how}): set --token or {TOKEN_VARIABLE}"
            ) from None
        raise ClientError(f"the node at {node.base} answered: {text}") from None
    except NodeServerError as exc:
        text = _hide(str(exc), node.token)
        raise ClientError(f"unexpected answer from {node.base} (is it a NodeODM API?): {text}") from None
    except (OdmError, requests.RequestException, ValueError) as exc:
        raise ClientError(f"{node.base}: {_hide(str(exc), node.token)}") from None
    except (TypeError, KeyError) as exc:  # PyODM reading an answer that is not NodeODM's
        raise ClientError(f"unexpected answer from {node.base} (is it a NodeODM API?): {exc!r}") from None


def _hide(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text


def reason(text: str) -> str:
    """The useful end of a requests connection error, without the URL (which holds the token)."""
    for known in (
        "Connection refused",
        "Name or service not known",
        "No route to host",
        "timed out",
        "Temporary failure in name resolution",
        "Connection reset",
        "certificate verify failed",
    ):
        if known.lower() in text.lower():
            return known.lower()
    return "connection failed"


# --- options ---------------------------------------------------------------------------------------------


def parse_option_args(pairs: list[str]) -> list[dict[str, str]]:
    """`name=value` strings (a bare `name` means `name=true`) as NodeODM option items."""
    items = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip().removeprefix("--")
        if not name:
            raise ClientError(f"bad --option {pair!r}: expected name=value")
        items.append({"name": name, "value": value if sep else "true"})
    return items


def check_options(items: list[dict[str, str]], catalog: list[dict[str, Any]]) -> dict[str, Any]:
    """Typed {name: value} for the options, checked like the farm's API does, or a ClientError listing all problems."""
    known = [entry["name"] for entry in catalog]
    problems = []
    for item in items:
        if item["name"] not in known:
            close = difflib.get_close_matches(item["name"], known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"--option {item['name']}: this node has no such option{hint}")
    try:
        typed = validate_options(items, catalog, skip_post_processing=True)
    except InvalidOptions as exc:
        for error in exc.errors or [{"name": "options", "error": str(exc)}]:
            entry = next((e for e in catalog if e["name"] == error["name"]), {})
            domain = entry.get("domain")
            expected = f"; expected {entry.get('type')}" + (f" in {_domain(domain)}" if domain else "")
            problems.append(f"--option {error['name']}: {error['error']}{expected if entry else ''}")
        typed = []
    if problems:
        raise ClientError("invalid options, nothing was uploaded:\n  " + "\n  ".join(problems))
    return {item["name"]: item["value"] for item in typed}


def _domain(domain: Any) -> str:
    if isinstance(domain, list):
        shown = ", ".join(repr(d) for d in domain[:12])
        return f"[{shown}{', ...' if len(domain) > 12 else ''}]"
    return str(domain)


def node_options(node: RemoteNode) -> list[dict[str, Any]]:
    catalog = node.get("/options")
    if not isinstance(catalog, list):
        raise ClientError(f"unexpected answer from {node.base}/options (is it a NodeODM API?)")
    return catalog


# --- tasks -----------------------------------------------------------------------------------------------


def task_list(node: RemoteNode) -> list[Any]:
    """TaskInfo of every task the node lists (tasks removed meanwhile are left out)."""
    from concurrent.futures import ThreadPoolExecutor

    listed = node.get("/task/list")
    if not isinstance(listed, list):
        raise ClientError(f"unexpected answer from {node.base}/task/list (is it a NodeODM API?)")

    def info(uuid: str) -> Any:
        try:
            return Task(node, uuid).info()
        except NodeResponseError:
            return None  # removed between the list and its info

    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(info, [t["uuid"] for t in listed if isinstance(t, dict) and "uuid" in t]))
    return [i for i in found if i is not None]


# How long a waiting command keeps trying a node it cannot reach (an API restart, a network blip) before it
# gives up: a task runs for hours, and losing the wait over a few seconds of outage would be absurd.
RECONNECT_SECONDS = 300.0


def patiently(
    call: Callable[[], Any],
    on_retry: Callable[[str], None] | None = None,
    give_up_after: float = RECONNECT_SECONDS,
) -> Any:
    """`call()`, retried with backoff while the node cannot be reached, for up to `give_up_after` seconds."""
    deadline = time.monotonic() + give_up_after
    delay = 0.5
    while True:
        try:
            return call()
        except (NodeConnectionError, NodeServerError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            if on_retry:
                on_retry(reason(str(exc)) if isinstance(exc, NodeConnectionError) else "server error")
            time.sleep(delay)
            delay = min(delay * 2, 3.0)


def follow_output(
    task: Task,
    write: Callable[[str], None],
    interval: float = 1.0,
    follow: bool = True,
    on_retry: Callable[[str], None] | None = None,
) -> Any:
    """Write every console line once, as it comes; with `follow`, until the task ends. Returns the last info.

    A node unreachable at the first request is an error at once (a wrong URL); later, while following, an
    outage is waited out (`on_retry` hears of each attempt).
    """
    printed = 0
    first = True
    while True:
        # info before the output: once the task has ended, the output fetched after it is complete
        if first or not follow:
            info = task.info() if follow else None
            lines = task.output(printed)
        else:
            info = patiently(task.info, on_retry)
            lines = patiently(functools.partial(task.output, printed), on_retry)
        first = False
        if not isinstance(lines, list):
            raise ClientError(f"unexpected answer from {task.node.base}/task/{task.uuid}/output")
        for line in lines:
            write(line)
        printed += len(lines)
        if info is None or info.status in ENDED:
            return info
        time.sleep(interval)


def extract(zip_path: Path, destination: Path) -> list[str]:
    try:
        with zipfile.ZipFile(zip_path) as archive:
            names = archive.namelist()
            archive.extractall(destination)  # zipfile drops absolute paths and ".." parts
    except zipfile.BadZipFile as exc:
        raise ClientError(f"the downloaded all.zip is not a usable archive: {exc}") from None
    return names


def ask_yes_no(question: str, stream: Any = None, wait: float = 30.0) -> bool | None:
    """The answer to a y/N question on stdin: True, False, or None when nobody can answer (no input)."""
    stream = stream or sys.stdin
    print(question, end="", file=sys.stderr, flush=True)
    try:
        if not stream.isatty():
            # a pipe that never writes must not hang us: give it a while, then treat it as no answer
            ready, _, _ = select.select([stream], [], [], wait)
            if not ready:
                return None
        answer = stream.readline()
    except (OSError, ValueError, KeyboardInterrupt):
        return None
    finally:
        print(file=sys.stderr)
    if not answer:
        return None
    return answer.strip().lower() in ("y", "yes")


def dump(value: Any) -> str:
    return json.dumps(value, indent=2, default=str)
