"""User accounts on a real farm: login tokens, ownership, rate limits, quotas, the CLI, split-merge submodels."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pyodm import Node
from pyodm.exceptions import NodeResponseError

from tests.e2e.helpers import make_images, slow_image, wait_status
from tests.support.farm import ROOT, TOKEN, Farm, RedisServer, module_farm, wait_until

PASSWORD = "correct horse battery"


def cli(farm: Farm, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "odm_farm.cli", "user", *args], cwd=ROOT, env=farm.env,
                          input=stdin, capture_output=True, text=True, timeout=60)


def add_user(farm: Farm, name: str, *flags: str) -> None:
    done = cli(farm, "add", name, "--password-stdin", *flags, stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr


def login(farm: Farm, name: str, password: str = PASSWORD) -> dict[str, Any]:
    # form-encoded, as CloudODM and WebODM post it
    answer = requests.post(farm.url + "/auth/login", data={"username": name, "password": password}, timeout=30)
    assert answer.status_code == 200
    return answer.json()  # type: ignore[no-any-return]


def node_for(farm: Farm, token: str) -> Node:
    return Node("127.0.0.1", farm.ports[0], token=token, timeout=30)


def call(farm: Farm, token: str, method: str, path: str, **kwargs: Any) -> Any:
    answer = requests.request(method, farm.url + path, params={"token": token}, timeout=30, **kwargs)
    assert answer.status_code == 200, (path, answer.status_code)
    return answer.json() if answer.headers.get("Content-Type", "").startswith("application/json") else answer.content


def upload_each(farm: Farm, token: str, images: list[str]) -> dict[str, Any]:
    """Upload files one by one to a new session; the first refusal."""
    uuid = call(farm, token, "POST", "/task/new/init")["uuid"]
    for image in images:
        with open(image, "rb") as f:
            answer = call(farm, token, "POST", f"/task/new/upload/{uuid}", files={"images": f})
        if answer != {"success": True}:
            return answer  # type: ignore[no-any-return]
    return {}


def remove_uploads(farm: Farm, token: str) -> None:
    for key in farm.redis.keys("odmfarm:upload:*"):
        if not key.endswith(":files"):
            assert call(farm, token, "POST", "/task/remove", data={"uuid": key.split(":")[2]}) == {"success": True}
    assert not farm.redis.keys("odmfarm:upload:*")


@pytest.fixture(scope="module")
def afarm(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    """One farm with accounts for the module: registration closed, a 2-slot simulate worker."""
    with module_farm(redis_server, tmp_path_factory, "accounts", accounts="true", simulate_seconds="0.3", login_attempts="50") as started:
        yield started


def test_login_register_and_what_auth_info_says(afarm: Farm) -> None:
    info = requests.get(afarm.url + "/auth/info", timeout=30).json()
    assert info["loginUrl"] == "/auth/login" and info["registerUrl"] is None, info
    assert "Registration is closed" in info["message"]

    # CloudODM's flow starts from this error, then asks /auth/info
    bad = requests.get(afarm.url + "/info", params={"token": "nope"}, timeout=30).json()
    assert bad["error"].startswith("Invalid authentication token")

    # closed registration: anonymous callers are refused, the node token creates the user
    refused = requests.post(afarm.url + "/auth/register", data={"username": "dora", "password": PASSWORD},
                            timeout=30).json()
    assert refused == {"error": "Registration is disabled on this node.", "noRetry": True}
    created = afarm.post("/auth/register", data={"username": "dora", "password": PASSWORD}).json()
    assert created["success"] is True and len(created["token"]) >= 40
    again = afarm.post("/auth/register", data={"username": "dora", "password": PASSWORD}).json()
    assert again["error"] == "User dora already exists."
    short = afarm.post("/auth/register", json={"username": "eve", "password": "short"}).json()
    assert "Invalid password" in short["error"]

    token = login(afarm, "dora")["token"]
    assert token != created["token"]
    assert node_for(afarm, token).info().version == "2.2.4"  # PyODM with the login token, unchanged
    assert login(afarm, "dora", "wrong password") == {"error": "Invalid username or password."}
    assert login(afarm, "nobody") == {"error": "Invalid username or password."}
    # a JSON body works too
    answer = requests.post(afarm.url + "/auth/login", json={"username": "dora", "password": PASSWORD}, timeout=30)
    assert "token" in answer.json()
    # the stored token is a hash, never the token itself
    stored = afarm.redis.keys("odmfarm:authtoken:*")
    assert stored and not any(token in key for key in stored)
    assert afarm.redis.hget("odmfarm:user:dora", "password").startswith("$argon2id$")


def test_token_expiry_and_revocation(afarm: Farm) -> None:
    add_user(afarm, "erin")
    short = cli(afarm, "token", "erin", "--hours", str(4 / 3600))
    assert short.returncode == 0, short.stderr
    token = short.stdout.strip()
    assert "error" not in call(afarm, token, "GET", "/task/list")
    wait_until(lambda: "error" in call(afarm, token, "GET", "/task/list"), 10, "the token never expired")
    assert call(afarm, token, "GET", "/task/list")["error"].startswith("Invalid authentication token")

    kept = login(afarm, "erin")["token"]
    other = login(afarm, "erin")["token"]
    assert call(afarm, kept, "GET", "/task/list") == []
    revoked = cli(afarm, "token", "erin", "--revoke")
    assert revoked.returncode == 0 and "2 token(s)" in revoked.stdout
    for gone in (kept, other):
        assert call(afarm, gone, "GET", "/task/list")["error"].startswith("Invalid authentication token")

    fresh = login(afarm, "erin")["token"]
    assert cli(afarm, "remove", "erin").returncode == 0
    assert call(afarm, fresh, "GET", "/info")["error"].startswith("Invalid authentication token")
    assert login(afarm, "erin") == {"error": "Invalid username or password."}


def test_two_users_see_only_their_own_tasks(afarm: Farm, tmp_path: Path) -> None:
    add_user(afarm, "alice")
    add_user(afarm, "bob")
    add_user(afarm, "root", "--admin")
    alice, bob = login(afarm, "alice")["token"], login(afarm, "bob")["token"]
    a_task = node_for(afarm, alice).create_task(make_images(tmp_path / "a", 2))
    b_task = node_for(afarm, bob).create_task(make_images(tmp_path / "b", 2))
    a_task.wait_for_completion(interval=0.3)
    b_task.wait_for_completion(interval=0.3)

    assert call(afarm, alice, "GET", "/task/list") == [{"uuid": a_task.uuid}]
    assert call(afarm, bob, "GET", "/task/list") == [{"uuid": b_task.uuid}]
    for everyone in (TOKEN, login(afarm, "root")["token"]):  # the node token and an admin see both
        listed = {t["uuid"] for t in call(afarm, everyone, "GET", "/task/list")}
        assert {a_task.uuid, b_task.uuid} <= listed
        assert call(afarm, everyone, "GET", f"/task/{a_task.uuid}/info")["uuid"] == a_task.uuid

    # PyODM: bob cannot read alice's task
    with pytest.raises(NodeResponseError, match=f"{a_task.uuid} not found"):
        node_for(afarm, bob).get_task(a_task.uuid).info()

    # every route answers for alice's task exactly as for a uuid that does not exist
    unknown = str(uuidlib.uuid4())
    for method, path, body in (
        ("GET", "/task/{}/info", None),
        ("GET", "/task/{}/output", None),
        ("GET", "/task/{}/download/all.zip", None),
        ("POST", "/task/cancel", {"uuid": "{}"}),
        ("POST", "/task/remove", {"uuid": "{}"}),
        ("POST", "/task/restart", {"uuid": "{}"}),
        ("POST", "/task/new/upload/{}", None),
        ("POST", "/task/new/commit/{}", None),
    ):
        answers = []
        for target in (a_task.uuid, unknown):
            data = {k: v.format(target) for k, v in body.items()} if body else None
            answer = call(afarm, bob, method, path.format(target), data=data)
            answers.append(json.dumps(answer).replace(target, "<uuid>"))
        assert answers[0] == answers[1], (path, answers)
    # nothing happened to alice's task
    assert a_task.info().status.value == 40 and a_task.download_zip(str(tmp_path / "out"))
    assert a_task.info().uuid == a_task.uuid
    # and bob may of course remove his own
    assert node_for(afarm, bob).get_task(b_task.uuid).remove()


def test_an_upload_session_belongs_to_its_user(afarm: Farm, tmp_path: Path) -> None:
    add_user(afarm, "frank")
    add_user(afarm, "gina")
    frank, gina = login(afarm, "frank")["token"], login(afarm, "gina")["token"]
    uuid = call(afarm, frank, "POST", "/task/new/init")["uuid"]
    image = Path(make_images(tmp_path, 1)[0])
    stolen = call(afarm, gina, "POST", f"/task/new/upload/{uuid}", files={"images": image.open("rb")})
    assert stolen == {"error": "Invalid uuid (not found)"}
    assert call(afarm, frank, "POST", f"/task/new/upload/{uuid}", files={"images": image.open("rb")}) == {"success": True}
    assert call(afarm, gina, "POST", f"/task/new/commit/{uuid}") == {"error": "Invalid uuid (not found)"}
    assert call(afarm, gina, "POST", "/task/remove", data={"uuid": uuid})["success"] is False
    assert call(afarm, frank, "POST", f"/task/new/commit/{uuid}") == {"uuid": uuid}
    assert afarm.redis.hget(f"odmfarm:task:{uuid}", "owner") == "frank"


def test_quotas_images_bytes_and_running_tasks(afarm: Farm, tmp_path: Path) -> None:
    add_user(afarm, "hank", "--max-images", "3", "--max-running", "1", "--max-bytes", "150000")
    add_user(afarm, "ivy")
    hank, ivy = login(afarm, "hank")["token"], login(afarm, "ivy")["token"]
    assert call(afarm, hank, "GET", "/info")["maxImages"] == 3
    assert call(afarm, ivy, "GET", "/info")["maxImages"] is None
    assert afarm.get("/info").json()["maxImages"] is None

    # uploads one by one (PyODM retries a refused upload for 75 s: it ignores noRetry there)
    refused = upload_each(afarm, hank, make_images(tmp_path / "four", 4))
    assert refused == {"error": "4 images uploaded, but this node can only process up to 3.", "noRetry": True}
    assert int(afarm.redis.get("odmfarm:user:hank:bytes")) == 3 * 20_004, "an abandoned upload counts"
    remove_uploads(afarm, hank)
    assert int(afarm.redis.get("odmfarm:user:hank:bytes")) == 0

    # running at once: the second task waits QUEUED while the first runs, then starts by itself
    first = node_for(afarm, hank).create_task([slow_image(tmp_path, 4)])
    wait_status(afarm, first.uuid, (20,))
    second = node_for(afarm, hank).create_task(make_images(tmp_path / "second", 1))
    assert second.info().status.value == 10
    other = node_for(afarm, ivy).create_task(make_images(tmp_path / "other", 1))  # ivy is not held up
    other.wait_for_completion(interval=0.2)
    assert first.info().status.value == 20 and second.info().status.value == 10, "hank runs 1 task at once"
    first.wait_for_completion(interval=0.2)
    ended = time.monotonic()
    second.wait_for_completion(interval=0.2)
    assert time.monotonic() - ended < 5, "the waiting task starts as soon as the first one ends"

    # stored bytes: uploads past the limit are refused; removing a task frees its bytes
    used = int(afarm.redis.get("odmfarm:user:hank:bytes"))
    assert used == 104 + 20_004, "the slow image and one image are stored"
    refused = upload_each(afarm, hank, make_images(tmp_path / "big", 3, size=60_000))
    assert refused["noRetry"] is True and refused["error"].startswith(
        "Storage quota exceeded: this upload would store 200120 bytes, but your limit is 150000 bytes."
    ), refused
    assert int(afarm.redis.get("odmfarm:user:hank:bytes")) == used + 2 * 60_004, "the refused file is not kept"
    remove_uploads(afarm, hank)
    assert int(afarm.redis.get("odmfarm:user:hank:bytes")) == used
    first.remove()
    second.remove()
    assert int(afarm.redis.get("odmfarm:user:hank:bytes")) == 0
    node_for(afarm, hank).create_task(make_images(tmp_path / "fits", 2, size=60_000)).wait_for_completion(interval=0.2)


def test_login_attempts_are_limited_per_user_and_per_address(farm_factory) -> None:  # type: ignore[no-untyped-def]
    farm: Farm = farm_factory(workers=0, accounts="true", login_attempts="3", login_window_seconds="60")
    add_user(farm, "jack")
    add_user(farm, "kate")
    for _ in range(3):
        assert login(farm, "jack", "wrong guess")["error"] == "Invalid username or password."
    blocked = login(farm, "jack")  # the right password, too late
    assert blocked == {"error": "Too many failed login attempts: try again in 60 seconds.", "noRetry": True}
    # the same address is held up for every name; the counters expire with the window
    assert "Too many failed login attempts" in login(farm, "kate")["error"]
    assert 0 < farm.redis.ttl("odmfarm:loginfail:user:jack") <= 60
    farm.redis.delete("odmfarm:loginfail:addr:127.0.0.1")
    assert "token" in login(farm, "kate"), "another user from a fresh address logs in"
    assert "Too many failed login attempts" in login(farm, "jack")["error"]


def test_the_user_cli(afarm: Farm) -> None:
    add_user(afarm, "liam", "--max-running", "2", "--max-bytes", "1000000")
    listed = cli(afarm, "list")
    assert listed.returncode == 0
    row = next(line.split() for line in listed.stdout.splitlines() if line.startswith("liam "))
    assert row == ["liam", "no", "-", "2", "1000000"]
    assert "password" not in listed.stdout and "$argon2" not in listed.stdout
    duplicate = cli(afarm, "add", "liam", "--password", PASSWORD)
    assert duplicate.returncode == 1 and "already exists" in duplicate.stderr
    weak = cli(afarm, "add", "mia", "--password", "short")
    assert weak.returncode == 1 and "Invalid password" in weak.stderr
    token = cli(afarm, "token", "liam").stdout.strip()
    assert call(afarm, token, "GET", "/task/list") == []
    assert cli(afarm, "remove", "liam").returncode == 0
    assert cli(afarm, "remove", "liam").returncode == 1
    assert "liam " not in cli(afarm, "list").stdout


def test_split_merge_submodels_belong_to_the_parent_tasks_user(farm_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.e2e.test_secrets import SPLIT_CONFIG_PY, SPLIT_RUN_PY
    from tests.workers.test_odm_engine import make_fake_odm

    odm = make_fake_odm(tmp_path / "odm", config_py=SPLIT_CONFIG_PY)
    # keep the submodel, so that its owner can be read after the run
    (odm / "run.py").write_text(SPLIT_RUN_PY.replace("    sub.remove()\n", ""))
    farm: Farm = farm_factory(workers=0, accounts="true")
    farm.env["ODM_FARM_PUBLIC_URL"] = farm.url
    farm.start_worker("odm1", ODM_FARM_ODM_PATH=str(odm), ODM_FARM_WORKER_GPU="false")
    add_user(farm, "nora")
    add_user(farm, "otto")
    nora = login(farm, "nora")["token"]

    parent = node_for(farm, nora).create_task(make_images(tmp_path / "in", 2), {"split": 1})
    parent.wait_for_completion(interval=0.3)
    listed = [t["uuid"] for t in call(farm, nora, "GET", "/task/list")]
    assert parent.uuid in listed and len(listed) == 2, listed
    submodel = next(u for u in listed if u != parent.uuid)
    assert farm.redis.hget(f"odmfarm:task:{submodel}", "owner") == "nora"
    assert call(farm, nora, "GET", f"/task/{submodel}/info")["status"]["code"] == 40
    otto = login(farm, "otto")["token"]
    assert call(farm, otto, "GET", "/task/list") == []
    assert call(farm, otto, "GET", f"/task/{submodel}/info") == {"error": f"{submodel} not found"}
    # the key that named nora to the proxy ended with the run, and never held the node token
    console = "\n".join(call(farm, nora, "GET", f"/task/{parent.uuid}/output"))
    assert "sm_cluster: http://127.0.0.1:" in console and TOKEN not in console
