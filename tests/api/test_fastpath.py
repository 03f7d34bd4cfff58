"""The polled read routes answered without Flask (api/fastpath.py), on a real redis-server.

Every case is asked twice: through the app as gunicorn runs it (FastReads first), and through Flask alone;
both answers must be the same. Successes must come from FastReads (Flask never sees them), everything else
from Flask. The info must follow every change of the task record at once (nothing is cached), /task/list
pages come from the index in creation order, and with accounts each user reads only their own tasks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.test import TestResponse

from api.app import OWNER_HEADER, HoldDuringOutage, create_app
from api.fastpath import FastReads
from api.routes_tasks import MAX_PAGE
from shared.accounts import Accounts
from shared.models import TaskStatus
from shared.settings import Settings
from shared.tasks import task_info
from shared.taskstore import TaskStore, new_run_id
from tests.support.farm import RedisServer

TOKEN = "fast-token"
S = TaskStatus


class Api:
    """The app with a switch: through FastReads (as deployed) or through Flask alone."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        hold = app.wsgi_app
        assert isinstance(hold, HoldDuringOutage) and isinstance(hold.app, FastReads)
        self.hold, self.fast = hold, hold.app
        self.flask_calls: list[str] = []
        flask_app = self.fast.app

        def counted(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            self.flask_calls.append(environ["PATH_INFO"])
            return flask_app(environ, start_response)

        self.fast.app = counted

    def get(self, path: str, headers: dict[str, str] | None = None) -> TestResponse:
        return self.app.test_client().get(path, headers=headers)

    def both(
        self, path: str, headers: dict[str, str] | None = None
    ) -> tuple[TestResponse, TestResponse, bool]:
        """(answer as deployed, Flask's answer, whether FastReads answered the first itself)."""
        self.flask_calls.clear()
        fast = self.get(path, headers)
        answered = not self.flask_calls
        self.hold.app = self.fast.app
        try:
            flask = self.get(path, headers)
        finally:
            self.hold.app = self.fast
        return fast, flask, answered


def make_app(redis_url: str, tmp: Path, **env: str) -> Flask:
    settings = {
        "ODM_FARM_REDIS_URL": redis_url,
        "ODM_FARM_DATA_DIR": str(tmp),
        "ODM_FARM_TOKEN": TOKEN,
        **env,
    }
    return create_app(Settings.from_env(settings), check_store=False)


def make_task(store: TaskStore, owner: str = "", lines: int = 0, **fields: Any) -> tuple[str, str]:
    """A committed, COMPLETED task with `lines` console lines; (uuid, run id)."""
    import uuid as uuidlib

    uuid, run_id = str(uuidlib.uuid4()), new_run_id()
    session: dict[str, Any] = {"options": [{"name": "dsm", "value": True}], "name": "a task", **fields}
    if owner:
        session["owner"] = owner
    assert store.create_session(uuid, session)
    store.add_session_files(uuid, {"a.jpg": 10, "b.jpg": 10, "gcp.txt": 1})
    store.commit_session(uuid, 1_000_000, run_id, {})
    if lines:
        store.append_output(uuid, run_id, [f"line {n}" for n in range(lines)])
    store.set_progress(uuid, 100)
    assert store.transition(uuid, S.COMPLETED, run_id=run_id, startedAt=1, processingTime=1234).ok
    return uuid, run_id


@pytest.fixture(scope="module")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url(redis_server.fresh_db())


@pytest.fixture(scope="module")
def store(redis_url: str) -> Iterator[TaskStore]:
    tasks = TaskStore.from_url(redis_url)
    yield tasks
    tasks.r.close()


@pytest.fixture(scope="module")
def api(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Api:
    return Api(make_app(redis_url, tmp_path_factory.mktemp("fast")))


@pytest.fixture(scope="module")
def tasks(store: TaskStore) -> list[str]:
    return [make_task(store, lines=20 if n == 0 else 0, name=f"task {n}")[0] for n in range(5)]


def same(fast: TestResponse, flask: TestResponse) -> None:
    assert fast.status_code == flask.status_code
    assert fast.mimetype == flask.mimetype == "application/json"
    assert fast.headers.get("Access-Control-Allow-Origin") == flask.headers.get("Access-Control-Allow-Origin")
    assert fast.get_json() == flask.get_json()


SUCCESSES = [
    "/task/{uuid}/info?token={token}",
    "/task/{uuid}/info?token={token}&with_output=0",
    "/task/{uuid}/info?token={token}&with_output=15",
    "/task/{uuid}/info?token={token}&with_output=-3",
    "/task/{uuid}/info?token={token}&with_output=-300",
    "/task/{uuid}/info?token={token}&with_output=",
    "/task/{uuid}/info?with_output=99&token={token}",
    "/task/{uuid}/info?token={token}&token=wrong",
    "/task/{uuid}/output?token={token}",
    "/task/{uuid}/output?token={token}&line=18",
    "/task/{uuid}/output?token={token}&line=-2",
    "/task/{uuid}/output?token={token}&line=500",
    "/task/list?token={token}",
    "/task/list?token={token}&limit=2",
    "/task/list?token={token}&offset=3&limit=10",
    "/task/list?token={token}&offset=99&limit=1",
    "/task/list?token={token}&offset=2",
]

ERRORS = [
    "/task/{uuid}/info",  # no token
    "/task/{uuid}/info?token=wrong",
    "/task/{uuid}/info?token=wrong&token={token}",  # the first value counts, as in Flask
    "/task/{uuid}/info?token={token}&with_output=abc",
    "/task/{uuid}/output?token={token}&line=1.5",
    "/task/3f1b8a52-6f0e-4c4b-9a57-2d1d8b1f7c11/info?token={token}",
    "/task/not-a-uuid/info?token={token}",
    "/task/3f1b8a52-6f0e-4c4b-9a57-2d1d8b1f7c11/output?token={token}",
    "/task/list?token={token}&limit=0",
    "/task/list?token={token}&limit=" + str(MAX_PAGE + 1),
    "/task/list?token={token}&offset=-1",
    "/task/list?token={token}&limit=ten",
    "/task/list?token=%C3%A9",
]


@pytest.mark.parametrize("template", SUCCESSES)
def test_fast_answers_equal_flask_answers(api: Api, tasks: list[str], template: str) -> None:
    fast, flask, answered = api.both(template.format(uuid=tasks[0], token=TOKEN))
    same(fast, flask)
    assert fast.status_code == 200 and "error" not in fast.get_json()
    assert answered, "a polled route's success must not go through Flask"


@pytest.mark.parametrize("template", ERRORS)
def test_refusals_and_errors_are_flasks_own(api: Api, tasks: list[str], template: str) -> None:
    fast, flask, answered = api.both(template.format(uuid=tasks[0], token=TOKEN))
    same(fast, flask)
    assert not answered
    assert "error" in fast.get_json()


def test_other_routes_and_methods_go_to_flask(api: Api, tasks: list[str]) -> None:
    for method, path in [
        ("GET", "/info"),
        ("HEAD", f"/task/{tasks[0]}/info"),
        ("GET", "/task/list/"),
        ("GET", f"/task/{tasks[0]}/info/"),
        ("GET", f"/task/{tasks[0]}/download/all.zip"),
    ]:
        api.flask_calls.clear()
        api.app.test_client().open(f"{path}?token={TOKEN}", method=method)
        assert api.flask_calls == [path]


def test_info_body_is_the_task_info_of_the_record(api: Api, store: TaskStore, tasks: list[str]) -> None:
    body = api.get(f"/task/{tasks[0]}/info?token={TOKEN}&with_output=-2").get_json()
    assert body == task_info(store.get(tasks[0]), ["line 18", "line 19"])
    assert body["options"] == [{"name": "dsm", "value": True}]
    assert body["imagesCount"] == 2 and body["processingTime"] == 1234 and body["progress"] == 100
    raw = api.get(f"/task/{tasks[0]}/info?token={TOKEN}").data
    assert raw.endswith(b"}\n"), "as jsonify ends its bodies"


def test_info_follows_every_change_of_the_record(api: Api, store: TaskStore) -> None:
    """Nothing is cached: after each write of the store, the answer is task_info of the record as stored."""
    import uuid as uuidlib

    uuid, run_id = str(uuidlib.uuid4()), new_run_id()

    def check(output_from: int | None = None) -> dict[str, Any]:
        query = "" if output_from is None else f"&with_output={output_from}"
        body = api.get(f"/task/{uuid}/info?token={TOKEN}{query}").get_json()
        expected = task_info(
            store.get(uuid), None if output_from is None else store.output(uuid, output_from)
        )
        if store.status(uuid) in (S.QUEUED, S.RUNNING) and expected["processingTime"] >= 0:
            assert abs(body.pop("processingTime") - expected.pop("processingTime")) < 2000
        assert body == expected
        return body

    assert store.create_session(uuid, {"options": [{"name": "fast-orthophoto", "value": True}], "name": "x"})
    store.add_session_files(uuid, {"a.jpg": 1, "b.jpg": 1, "c.jpg": 1})
    store.commit_session(uuid, 0, run_id, {})
    assert check()["status"] == {"code": S.QUEUED}
    assert store.transition(uuid, S.RUNNING, run_id=run_id, startedAt=1, worker="w1").ok
    assert check()["status"] == {"code": S.RUNNING}
    for progress in (12.5, 33.333, 70):
        store.set_progress(uuid, progress)
        assert check()["progress"] == (round(progress, 2) if progress % 1 else int(progress))
    store.append_output(uuid, run_id, ["one", "two", "three"])
    assert check(-2)["output"] == ["two", "three"]
    store.update(uuid, name="renamed")
    assert check()["name"] == "renamed"
    assert store.transition(uuid, S.FAILED, run_id=run_id, errorMessage="Cannot process dataset").ok
    assert check(0)["status"] == {"code": S.FAILED, "errorMessage": "Cannot process dataset"}
    new_run = new_run_id()
    restarted = store.requeue_decided(
        uuid,
        lambda _: ("", S.QUEUED),
        allowed=(S.FAILED,),
        clear_output=True,
        runId=new_run,
        progress=0,
        startedAt=None,
        errorMessage=None,
        options=[{"name": "dsm", "value": True}],
    )
    assert restarted.ok
    body = check(0)
    assert body["status"] == {"code": S.QUEUED} and body["output"] == [] and body["progress"] == 0
    assert body["options"] == [{"name": "dsm", "value": True}] and body["processingTime"] == -1
    assert store.delete(uuid)
    assert "not found" in api.get(f"/task/{uuid}/info?token={TOKEN}").get_json()["error"]


def test_list_is_in_creation_order_and_pages_slice_it(api: Api, store: TaskStore, tasks: list[str]) -> None:
    everything = [row["uuid"] for row in api.get(f"/task/list?token={TOKEN}").get_json()]
    assert everything == store.list_uuids()
    assert everything[: len(tasks)] == tasks, "creation order"
    pages = []
    for offset in range(0, len(everything), 2):
        page = api.get(f"/task/list?token={TOKEN}&offset={offset}&limit=2").get_json()
        assert all(set(row) == {"uuid"} for row in page)
        pages += [row["uuid"] for row in page]
    assert pages == everything
    assert api.get(f"/task/list?token={TOKEN}&offset={len(everything)}&limit=5").get_json() == []


def test_list_page_reads_only_the_page(store: TaskStore, tasks: list[str]) -> None:
    """The page is one ZRANGE of the index: no task record is read (a removed record's uuid still shows
    until the index drops it, which delete() does in the same transaction)."""
    expected = store.list_uuids()[1:3]
    calls: list[tuple[Any, ...]] = []
    original = store.r.execute_command

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return original(*args, **kwargs)

    store.r.execute_command = spy
    try:
        assert store.list_page(None, 1, 2) == expected
    finally:
        store.r.execute_command = original  # type: ignore[method-assign]
    assert [c[0] for c in calls] == ["ZRANGE"] and calls[0][2:4] == (1, 2)


@pytest.fixture(scope="module")
def accounts_api(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    url = redis_server.url(redis_server.fresh_db())
    app = make_app(url, tmp_path_factory.mktemp("fast-accounts"), ODM_FARM_ACCOUNTS="true")
    store = TaskStore.from_url(url)
    accounts: Accounts = app.extensions["accounts"]
    for name, admin in (("alice", False), ("bob", False), ("root", True)):
        accounts.add_user(name, "password-" + name, admin=admin)
    tokens = {name: accounts.issue_token(name) for name in ("alice", "bob", "root")}
    owned = {
        "alice": [make_task(store, "alice")[0] for _ in range(3)],
        "bob": [make_task(store, "bob")[0]],
        "": [make_task(store)[0]],
    }
    yield Api(app), tokens, owned
    store.r.close()


def test_each_user_lists_and_reads_only_their_own_tasks(accounts_api: Any) -> None:
    api, tokens, owned = accounts_api
    everything = owned["alice"] + owned["bob"] + owned[""]
    for who, expected in (("alice", owned["alice"]), ("bob", owned["bob"]), ("root", None)):
        fast, flask, answered = api.both(f"/task/list?token={tokens[who]}")
        same(fast, flask)
        assert answered
        listed = [row["uuid"] for row in fast.get_json()]
        if expected is None:  # an admin sees every task
            assert sorted(listed) == sorted(everything)
        else:
            assert listed == expected
    page = api.get(f"/task/list?token={tokens['alice']}&offset=1&limit=1").get_json()
    assert page == [{"uuid": owned["alice"][1]}]
    for path in (f"/task/{owned['alice'][0]}/info", f"/task/{owned['alice'][0]}/output"):
        mine, theirs = api.both(f"{path}?token={tokens['alice']}"), api.both(f"{path}?token={tokens['bob']}")
        same(*mine[:2])
        assert mine[2] and "error" not in mine[0].get_json()
        same(*theirs[:2])
        assert not theirs[2] and theirs[0].get_json() == {"error": f"{owned['alice'][0]} not found"}


def test_the_node_token_acts_for_the_user_its_proxy_names(accounts_api: Any) -> None:
    api, _, owned = accounts_api
    fast, flask, answered = api.both(f"/task/list?token={TOKEN}", headers={OWNER_HEADER: "alice"})
    same(fast, flask)
    assert answered and [row["uuid"] for row in fast.get_json()] == owned["alice"]
    assert len(api.get(f"/task/list?token={TOKEN}").get_json()) == 5, "the node token alone sees all"


def test_a_revoked_token_is_refused_at_once(accounts_api: Any) -> None:
    api, tokens, _ = accounts_api
    accounts: Accounts = api.app.extensions["accounts"]
    token = accounts.issue_token("bob")
    assert json.loads(api.get(f"/task/list?token={token}").data) != []
    accounts.revoke_token(token)
    fast, flask, answered = api.both(f"/task/list?token={token}")
    same(fast, flask)
    assert (
        fast.get_json() == {"error": "Invalid authentication token: token does not match."} and not answered
    )


def test_whole_list_cache_follows_every_creation_and_removal(
    api: Api, store: TaskStore, tasks: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole /task/list is kept while its index is unchanged; any creation or removal renews it."""
    import shared.node

    built: list[int] = []
    body = shared.node._list_body

    def counted(uuids: list[str]) -> bytes:
        built.append(len(uuids))
        return body(uuids)

    monkeypatch.setattr(shared.node, "LIST_CACHE_MIN", 0)  # cache every list, short ones too
    monkeypatch.setattr(shared.node, "_list_body", counted)

    def listed() -> list[str]:
        return [row["uuid"] for row in api.get(f"/task/list?token={TOKEN}").get_json()]

    first = listed()
    assert first == store.list_uuids() and built == [len(first)]
    assert listed() == first and len(built) == 1, "unchanged: answered from the cache"
    added = make_task(store)[0]
    assert listed() == [*first, added]
    assert store.delete(first[-1])
    assert listed() == [*first[:-1], added]
    assert store.delete(added)
    again = make_task(store)[0]  # a removal then a creation: same count, new sequence
    assert listed() == [*first[:-1], again]
    assert len(built) == 4
    page = api.get(f"/task/list?token={TOKEN}&limit=2").get_json()
    assert [row["uuid"] for row in page] == first[:2], "pages are read from the index, never the cache"


@pytest.mark.parametrize("route, arg", [("info", "with_output"), ("output", "line")])
def test_an_unknown_task_is_not_found_before_a_bad_argument(api: Api, route: str, arg: str) -> None:
    unknown = "3f1b8a52-6f0e-4c4b-9a57-2d1d8b1f7c11"
    body = api.get(f"/task/{unknown}/{route}?token={TOKEN}&{arg}=abc").get_json()
    assert body == {"error": f"{unknown} not found"}
