"""End to end over raw HTTP (requests, no client library): every NodeODM route, field and hostile input."""

from __future__ import annotations

import io
import json
import os
import threading
import time
import uuid as uuidlib
import zipfile
from collections.abc import Iterable, Sequence
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.helpers import task_info, wait_status, zip_bytes
from tests.support.farm import ROOT, Farm, wait_until
from tests.support.local_http import LocalServer, local_server, reply

TOKEN_ERROR = {"error": "Invalid authentication token: token does not match."}
FileSpec = tuple[str, bytes]


# --- helpers ------------------------------------------------------------------------------------


def jpeg(size: int = 2000) -> bytes:
    return b"\xff\xd8\xff\xe0" + os.urandom(size)


def images(count: int = 3, prefix: str = "img", extra: Iterable[FileSpec] = ()) -> list[FileSpec]:
    return [(f"{prefix}{i + 1}.jpg", jpeg()) for i in range(count)] + list(extra)


def image_parts(files: Iterable[FileSpec]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (name, data, "application/octet-stream")) for name, data in files]


def new_task(farm: Farm, files: Iterable[FileSpec] = (), **fields: Any) -> str:
    """POST /task/new (one request); returns the uuid."""
    data = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
    parts = image_parts(files)
    body = farm.post("/task/new", data=data, files=parts or None).json()
    assert "uuid" in body, body
    return str(body["uuid"])


def chunked_task(farm: Farm, files: Iterable[FileSpec], **fields: Any) -> str:
    """init, one upload per file, commit: the way PyODM and WebODM create tasks."""
    data = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
    uuid = farm.post("/task/new/init", data=data).json()["uuid"]
    for part in image_parts(files):
        assert farm.post(f"/task/new/upload/{uuid}", files=[part]).json() == {"success": True}
    assert farm.post(f"/task/new/commit/{uuid}").json() == {"uuid": uuid}
    return str(uuid)


def console(farm: Farm, uuid: str, line: int | None = None) -> list[str]:
    params = {} if line is None else {"line": line}
    lines = farm.get(f"/task/{uuid}/output", params=params).json()
    assert isinstance(lines, list), lines
    return lines


def banner(farm: Farm, uuid: str) -> dict[str, str]:
    """The arguments the engine parsed: ODM (and the simulate engine) print them as `key: value` lines."""
    found: dict[str, str] = {}
    for line in console(farm, uuid):
        key, _, value = line.split("]", 1)[-1].strip().partition(": ")
        found.setdefault(key, value)
    return found


def download(farm: Farm, uuid: str, asset: str = "all.zip", **kwargs: Any) -> requests.Response:
    return farm.get(f"/task/{uuid}/download/{asset}", **kwargs)


def zip_names(content: bytes) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(content)) as zf:
        return zf.namelist()


def remove(farm: Farm, *uuids: str) -> None:
    for uuid in uuids:
        farm.post("/task/remove", data={"uuid": uuid})


def raw_multipart(parts: Sequence[tuple[bytes, bytes | None, bytes]]) -> tuple[bytes, str]:
    """A multipart body built by hand, so file names can hold what requests would refuse or escape."""
    boundary = uuidlib.uuid4().hex.encode()
    body = b""
    for name, filename, data in parts:
        disposition = b'form-data; name="' + name + b'"'
        if filename is not None:
            disposition += b'; filename="' + filename + b'"'
        body += b"--" + boundary + b"\r\nContent-Disposition: " + disposition + b"\r\n"
        body += b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
    body += b"--" + boundary + b"--\r\n"
    return body, "multipart/form-data; boundary=" + boundary.decode()


def api_alive(farm: Farm) -> None:
    info = farm.get("/info").json()
    assert info["version"] == "2.2.4", info
    assert all(p.alive() for p in farm.apis), farm.logs()


def wait_webhooks(server: LocalServer, path: str, count: int, timeout: float = 60) -> list[Any]:
    wait_until(lambda: sum(1 for r in server.received if r.path == path) >= count, timeout,
               f"webhook {path} not called {count} time(s): {[r.path for r in server.received]}")
    return [json.loads(r.body) for r in server.received if r.path == path]


# --- creating tasks -----------------------------------------------------------------------------


def test_one_request_new_honours_every_field(farm: Farm) -> None:
    created = 1_600_000_000_123
    options = [{"name": "dsm", "value": True}, {"name": "orthophoto-resolution", "value": "3"}]
    skipped = new_task(farm, images(3), name="one request", options=options, skipPostProcessing="true",
                       dateCreated=str(created))
    default = new_task(farm, images(2), options=[{"name": "dsm", "value": True}])

    info = task_info(farm, skipped)
    assert info["name"] == "one request" and info["dateCreated"] == created
    assert info["imagesCount"] == 3
    # typed, in engine order, and skipPostProcessing=true adds no pc-ept/cog/gltf
    assert info["options"] == [{"name": "dsm", "value": True}, {"name": "orthophoto-resolution", "value": 3.0}]
    other = task_info(farm, default)
    assert {o["name"] for o in other["options"]} == {"dsm", "pc-ept", "cog", "gltf"}
    assert other["name"].startswith("Task of ")

    # the one-request form without files or zipurl
    assert farm.post("/task/new", data={"name": "empty"}).json() == {
        "error": "Need at least 1 file or a zip file url."}
    assert farm.post("/task/new").json() == {"error": "Need at least 1 file or a zip file url."}

    done = wait_status(farm, skipped, (40,), timeout=90)
    assert done["progress"] == 100 and done["dateCreated"] == created
    args = banner(farm, skipped)
    assert (args["dsm"], args["orthophoto_resolution"], args["pc_ept"], args["cog"]) == ("True", "3.0", "False",
                                                                                         "False")
    wait_status(farm, default, (40,), timeout=90)
    args = banner(farm, default)
    assert (args["dsm"], args["pc_ept"], args["cog"], args["gltf"]) == ("True", "True", "True", "True")
    remove(farm, skipped, default)


def test_zipurl_downloads_nested_images_and_geo(farm: Farm) -> None:
    archive = zip_bytes({
        "flight/day1/DJI_0001.JPG": jpeg(),
        "flight/day1/DJI_0002.JPG": jpeg(),
        "flight/day2/sub/DJI_0003.jpg": jpeg(),
        "flight/DJI_0004.jpg": jpeg(),
        "flight/geo.txt": b"EPSG:4326\nDJI_0001.JPG -91.99 46.84 320\n",
        "__MACOSX/flight/._DJI_0001.JPG": b"junk",
        "flight/readme.md": b"not an image",
    })
    with local_server() as server:
        server.routes["/images.zip"] = lambda h: reply(h, 200, archive, {"Content-Type": "application/zip"})
        server.routes["/corrupt.zip"] = lambda h: reply(h, 200, b"PK\x03\x04 this is not really a zip")
        good = new_task(farm, zipurl=server.url("/images.zip"), name="from zipurl")
        missing = new_task(farm, zipurl=server.url("/missing.zip"))
        corrupt = new_task(farm, zipurl=server.url("/corrupt.zip"))

        info = wait_status(farm, good, (40,), timeout=90)
        assert info["imagesCount"] == 4 and info["name"] == "from zipurl"
        assert banner(farm, good)["geo"].endswith(f"/{good}/gcp/geo.txt")
        assert any("GEO file found" in line for line in console(farm, good))
        images_json = json.loads(_member(farm, good, "images.json"))
        assert sorted(e["filename"] for e in images_json) == [
            "DJI_0001.JPG", "DJI_0002.JPG", "DJI_0003.jpg", "DJI_0004.jpg"]

        failed = wait_status(farm, missing, (30,), timeout=60)
        message = failed["status"]["errorMessage"]
        assert "HTTP 404" in message and "/missing.zip" in message, message

        broken = wait_status(farm, corrupt, (30,), timeout=60)
        assert "not a valid zip" in broken["status"]["errorMessage"], broken
        assert [r.path for r in server.received].count("/images.zip") == 1
    remove(farm, good, missing, corrupt)


def _member(farm: Farm, uuid: str, name: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(download(farm, uuid).content)) as zf:
        return zf.read(name)


def test_blocked_zipurl_and_max_images(farm_factory: Any) -> None:
    guarded = farm_factory(blocked_networks="127.0.0.0/8", max_images=2)
    with local_server() as server:
        server.routes["/images.zip"] = lambda h: reply(h, 200, zip_bytes({"a.jpg": jpeg()}))
        uuid = new_task(guarded, zipurl=server.url("/images.zip"))
        info = wait_status(guarded, uuid, (30,), timeout=60)
        message = info["status"]["errorMessage"]
        assert "not allowed" in message and "127.0.0.0/8" in message, message
        assert server.received == [], "a blocked zipurl must not be fetched"

    # one upload at a time: the third image is refused, a .txt is not an image
    refused = {"error": "3 images uploaded, but this node can only process up to 2.", "noRetry": True}
    session = guarded.post("/task/new/init").json()["uuid"]
    for name, expected in (("a.jpg", {"success": True}), ("b.jpg", {"success": True}), ("c.jpg", refused),
                           ("geo.txt", {"success": True}), ("a.jpg", {"success": True})):
        part = image_parts([(name, jpeg())])
        assert guarded.post(f"/task/new/upload/{session}", files=part).json() == expected, name
    assert guarded.post("/task/new", files=image_parts(images(3))).json() == refused
    # parallel uploads all pass the upload check before any is recorded: then commit refuses
    racing = guarded.post("/task/new/init").json()["uuid"]
    answers: list[dict[str, Any]] = []
    barrier = threading.Barrier(3)

    def upload(name: str) -> None:
        body = image_parts([(name, jpeg())])
        barrier.wait(10)
        answers.append(guarded.post(f"/task/new/upload/{racing}", files=body).json())

    threads = [threading.Thread(target=upload, args=(f"p{i}.jpg",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(answers) == 3 and all(a in ({"success": True}, refused) for a in answers), answers
    committed = guarded.post(f"/task/new/commit/{racing}").json()
    if refused not in answers:
        assert committed == refused
    else:
        assert committed == {"uuid": racing}
        assert task_info(guarded, racing)["imagesCount"] == answers.count({"success": True}) <= 2

    assert guarded.post(f"/task/new/commit/{session}").json() == {"uuid": session}
    assert wait_status(guarded, session, (40,), timeout=90)["imagesCount"] == 2


def test_seed_zip_populates_the_project_and_outputs_pick_it(farm: Farm) -> None:
    config = b"feature_type: SIFT\nprocesses: 1\n"
    reconstruction = b'[{"cameras": {}, "shots": {}, "points": {}, "seeded": true}]'
    seed = zip_bytes({"opensfm/config.yaml": config, "opensfm/reconstruction.json": reconstruction})
    uuid = chunked_task(farm, images(3, extra=[("seed.zip", seed)]), outputs=["opensfm", "images.json"],
                        skipPostProcessing="true")
    info = task_info(farm, uuid)
    assert info["imagesCount"] == 3, "seed.zip is not an image"
    info = wait_status(farm, uuid, (40,), timeout=90)
    assert info["imagesCount"] == 3
    # the engine found the seeded reconstruction in the project root and skipped that stage
    assert any("skipping opensfm" in line for line in console(farm, uuid))

    content = download(farm, uuid).content
    names = zip_names(content)
    assert set(names) >= {"opensfm/config.yaml", "opensfm/reconstruction.json", "images.json"}
    assert all(n.startswith("opensfm/") or n == "images.json" for n in names), names
    with zipfile.ZipFile(io.BytesIO(content)) as zf:
        assert zf.read("opensfm/config.yaml") == config
        assert zf.read("opensfm/reconstruction.json") == reconstruction
        assert "seed.zip" not in [e["filename"] for e in json.loads(zf.read("images.json"))]
    remove(farm, uuid)


@pytest.mark.parametrize("outputs", ['["../x"]', '"/etc"', '["/etc"]', "not json", '["a", "../../b"]', "[1]"])
def test_hostile_outputs_are_refused_at_init(farm: Farm, outputs: str) -> None:
    body = farm.post("/task/new/init", data={"outputs": outputs}).json()
    assert list(body) == ["error"] and body["error"].startswith("Invalid output"), body
    body = farm.post("/task/new", data={"outputs": outputs}, files=image_parts(images(1))).json()
    assert list(body) == ["error"] and body["error"].startswith("Invalid output"), body


def test_gcp_geo_groups_and_align_reach_the_engine(farm: Farm) -> None:
    extra = [
        ("gcp_list.txt", b"EPSG:4326\n-91.99 46.84 320 100 200 img1.jpg\n"),
        ("geo.txt", b"EPSG:4326\nimg1.jpg -91.99 46.84 320\n"),
        ("image_groups.txt", b"img1.jpg A\nimg2.jpg B\n"),
        ("align.laz", b"LASF" + os.urandom(300)),
    ]
    uuid = new_task(farm, images(3, extra=extra))
    info = wait_status(farm, uuid, (40,), timeout=90)
    assert info["imagesCount"] == 3
    args = banner(farm, uuid)
    assert args["gcp"].endswith(f"/{uuid}/gcp/gcp_list.txt"), args.get("gcp")
    assert args["geo"].endswith(f"/{uuid}/gcp/geo.txt"), args.get("geo")
    assert args["split_image_groups"].endswith(f"/{uuid}/gcp/image_groups.txt"), args.get("split_image_groups")
    assert args["align"].endswith(f"/{uuid}/gcp/align.laz"), args.get("align")
    remove(farm, uuid)


# --- webhooks -----------------------------------------------------------------------------------


def test_webhooks_completed_retried_and_failed(farm: Farm) -> None:
    calls = {"n": 0}
    lock = threading.Lock()

    def flaky(handler: BaseHTTPRequestHandler) -> None:
        with lock:
            calls["n"] += 1
            n = calls["n"]
        reply(handler, 500 if n <= 2 else 202, b"")

    with local_server() as server:
        server.routes["/hook"] = lambda h: reply(h, 200, b"ok")
        server.routes["/flaky"] = flaky
        server.routes["/failed"] = lambda h: reply(h, 200, b"ok")
        ok = new_task(farm, images(3), webhook=server.url("/hook?x=1"))
        retried = new_task(farm, images(2), webhook=server.url("/flaky"))
        failed = new_task(farm, images(2, extra=[("simulate-exit-1.jpg", jpeg(100))]),
                          webhook=server.url("/failed"))

        [payload] = wait_webhooks(server, "/hook", 1)
        assert payload["uuid"] == ok and payload["status"]["code"] == 40 and payload["progress"] == 100
        assert payload["imagesCount"] == 3 and isinstance(payload["images"], list)
        assert sorted(e["filename"] for e in payload["images"]) == ["img1.jpg", "img2.jpg", "img3.jpg"]
        hook = next(r for r in server.received if r.path == "/hook")
        assert hook.method == "POST" and hook.headers["Content-Type"].startswith("application/json")

        bodies = wait_webhooks(server, "/flaky", 3)
        assert all(b["uuid"] == retried and b["status"]["code"] == 40 for b in bodies)
        assert isinstance(bodies[-1]["images"], list) and len(bodies[-1]["images"]) == 2

        [failure] = wait_webhooks(server, "/failed", 1)
        assert failure["uuid"] == failed
        assert failure["status"] == {"code": 30, "errorMessage": "Cannot process dataset"}
        time.sleep(1.5)  # a delivered webhook is not sent again
        assert sum(1 for r in server.received if r.path == "/hook") == 1
        assert sum(1 for r in server.received if r.path == "/flaky") == 3
    remove(farm, ok, retried, failed)


# --- task commands ------------------------------------------------------------------------------


def _json_body(uuid: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"json": {**({"uuid": uuid} if uuid else {}), **extra}}


def _form_body(uuid: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"data": {**({"uuid": uuid} if uuid else {}), **extra}}


def _multipart_body(uuid: str | None = None, **extra: Any) -> dict[str, Any]:
    fields = {**({"uuid": uuid} if uuid else {}), **extra}
    # requests sends multipart only when `files` is given; (None, value) parts are plain fields
    return {"files": {k: (None, v) for k, v in fields.items()} or {"nothing": (None, "")}}


BODIES = {"json": _json_body, "urlencoded": _form_body, "multipart": _multipart_body}


@pytest.mark.parametrize("kind", list(BODIES))
def test_cancel_remove_restart_accept_every_body_kind(farm: Farm, kind: str) -> None:
    body = BODIES[kind]
    uuid = new_task(farm, images(2), options=[{"name": "dsm", "value": True}])
    for route in ("cancel", "remove", "restart"):
        assert farm.post(f"/task/{route}", **body()).json() == {"success": False, "error": "uuid param missing."}
    wait_status(farm, uuid, (40,), timeout=90)
    before = task_info(farm, uuid, with_output=0)

    # an invalid restart leaves the task exactly as it was
    bad = [{"name": "mesh-octree-depth", "value": 99}]
    answer = farm.post("/task/restart", **body(uuid, options=json.dumps(bad))).json()
    assert answer["success"] is False and "mesh-octree-depth" in answer["error"], answer
    after = task_info(farm, uuid, with_output=0)
    assert after["status"] == before["status"] and after["options"] == before["options"]
    assert after["output"] == before["output"] and after["progress"] == 100

    # a valid restart replaces the options and runs again
    good = json.dumps([{"name": "skip-report", "value": True}])
    assert farm.post("/task/restart", **body(uuid, options=good)).json() == {"success": True}
    restarted = task_info(farm, uuid)
    assert {"name": "skip-report", "value": True} in restarted["options"]
    assert "dsm" not in {o["name"] for o in restarted["options"]}
    wait_status(farm, uuid, (40,), timeout=90)
    assert download(farm, uuid, "report.pdf").json() != {"error": "Invalid asset"}

    assert farm.post("/task/cancel", **body(uuid)).json() == {"success": True}  # a completed task
    # CANCELED, as the reference does (WebODM's node tests expect it); the results stay until removed
    assert task_info(farm, uuid)["status"]["code"] == 50
    assert download(farm, uuid, "all.zip").content[:2] == b"PK"
    assert farm.post("/task/remove", **body(uuid)).json() == {"success": True}
    assert farm.post("/task/remove", **body(uuid)).json() == {"success": False, "error": f"{uuid} not found"}
    assert farm.post("/task/cancel", **body(uuid)).json() == {"success": False, "error": f"{uuid} not found"}
    assert farm.post("/task/restart", **body(uuid)).json() == {"success": False, "error": f"{uuid} not found"}
    assert task_info(farm, uuid) == {"error": f"{uuid} not found"}


def test_running_task_list_output_and_restart_refused(farm: Farm) -> None:
    slow = new_task(farm, images(2, extra=[("simulate-seconds-60.jpg", jpeg(100))]), name="slow")
    quick = [chunked_task(farm, images(1), name=f"quick{i}") for i in range(2)]

    listed = [t["uuid"] for t in farm.get("/task/list").json()]
    assert [u for u in listed if u in (slow, *quick)] == [slow, *quick], "creation order"

    wait_status(farm, slow, (20,), timeout=60)
    wait_until(lambda: len(console(farm, slow)) >= 5, 60, "the running engine printed nothing")
    info = task_info(farm, slow, with_output=-3)
    assert info["status"]["code"] == 20 and len(info["output"]) == 3
    assert all(isinstance(line, str) for line in info["output"])
    assert len(console(farm, slow, line=-2)) == 2
    assert console(farm, slow, line=2)[:3] == console(farm, slow)[2:5]
    assert farm.get(f"/task/{slow}/info", params={"with_output": "abc"}).json() == {
        "error": "Invalid with_output: abc"}
    assert farm.get(f"/task/{slow}/output", params={"line": "x"}).json() == {"error": "Invalid line: x"}
    assert download(farm, slow).json() == {"error": "Asset not ready"}
    # results that exist before the task is COMPLETED (stored, final status not yet written) are not served
    early = farm.root / "storage" / slow / "results" / "all.zip"
    early.parent.mkdir(parents=True, exist_ok=True)
    early.write_bytes(b"PK\x05\x06" + bytes(18))
    assert download(farm, slow).json() == {"error": "Asset not ready"}
    assert farm.post("/task/restart", data={"uuid": slow}).json() == {
        "success": False, "error": "Task cannot be restarted"}
    assert task_info(farm, slow)["status"]["code"] == 20
    assert farm.post("/task/cancel", json={"uuid": slow}).json() == {"success": True}
    assert wait_status(farm, slow, (50,))["status"]["code"] == 50

    for uuid in quick:
        wait_status(farm, uuid, (40,), timeout=90)
    full = console(farm, quick[0])
    assert len(full) > 5
    assert console(farm, quick[0], line=-2) == full[-2:]
    assert task_info(farm, quick[0], with_output=-3)["output"] == full[-3:]
    assert console(farm, quick[0], line=len(full) + 10) == []
    remove(farm, slow, *quick)
    api_alive(farm)


# --- downloads ----------------------------------------------------------------------------------


def test_downloads_ranges_head_and_assets(farm: Farm) -> None:
    uuid = new_task(farm, images(3))
    pending = download(farm, uuid)
    if pending.headers["Content-Type"].startswith("application/json"):  # else it finished that fast
        assert pending.json() == {"error": "Asset not ready"}
    wait_status(farm, uuid, (40,), timeout=90)

    full = download(farm, uuid)
    size = len(full.content)
    assert full.status_code == 200 and size > 2000
    assert full.headers["Content-Length"] == str(size)
    assert full.headers["Content-Disposition"] == "attachment; filename=all.zip"
    assert full.headers["Accept-Ranges"] == "bytes"
    assert "odm_orthophoto/odm_orthophoto.tif" in zip_names(full.content)

    head = requests.head(f"{farm.url}/task/{uuid}/download/all.zip", params=farm.params(), timeout=30)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == str(size) and head.headers["Accept-Ranges"] == "bytes"
    assert head.headers["Content-Disposition"] == "attachment; filename=all.zip"

    for header, expected, content_range in (
        ("bytes=0-99", full.content[:100], f"bytes 0-99/{size}"),
        ("bytes=1000-1999", full.content[1000:2000], f"bytes 1000-1999/{size}"),
        ("bytes=-50", full.content[-50:], f"bytes {size - 50}-{size - 1}/{size}"),
        (f"bytes={size - 10}-", full.content[-10:], f"bytes {size - 10}-{size - 1}/{size}"),
    ):
        part = download(farm, uuid, headers={"Range": header})
        assert part.status_code == 206, (header, part.status_code)
        assert part.content == expected, header
        assert part.headers["Content-Range"] == content_range
        assert part.headers["Content-Length"] == str(len(expected))
    beyond = download(farm, uuid, headers={"Range": f"bytes={size}-{size + 100}"})
    assert beyond.status_code == 416 and beyond.headers["Content-Range"] == f"bytes */{size}"

    magic = {"orthophoto.tif": (b"II*\x00", b"MM\x00*"), "georeferenced_model.laz": (b"LASF",),
             "report.pdf": (b"%PDF",), "textured_model.zip": (b"PK\x03\x04",)}
    for asset, prefixes in magic.items():
        got = download(farm, uuid, asset)
        assert got.status_code == 200 and got.content[:4] in prefixes, (asset, got.content[:80])
        assert got.headers["Content-Disposition"] == f"attachment; filename={asset}"
        assert got.headers["Content-Length"] == str(len(got.content))
    assert any(n.endswith(".obj") for n in zip_names(download(farm, uuid, "textured_model.zip").content))

    missing = download(farm, uuid, "dsm.tif").json()
    assert list(missing) == ["error"] and "dsm.tif" in missing["error"], missing
    assert download(farm, uuid, "secrets.txt").json() == {"error": "Invalid asset"}
    assert download(farm, uuid, "..%2F..%2F..%2Fetc%2Fpasswd").json() == {"error": "Invalid asset"}
    assert download(farm, str(uuidlib.uuid4())).json()["error"].endswith("not found")
    remove(farm, uuid)


# --- hostile input ------------------------------------------------------------------------------


def _files_named(root: Path, fragment: str) -> list[Path]:
    return [p for p in root.rglob("*") if fragment in p.name and p.is_file()]


def test_hostile_file_names_stay_inside_the_storage_folder(farm: Farm) -> None:
    # backslashes escaped as a quoted-string needs them (b"\\\\" on the wire); the unescaped form is below
    parts = [(b"images", b"../../evil1.jpg", jpeg()), (b"images", b"..\\\\..\\\\evil2.jpg", jpeg()),
             (b"images", b"a\x00b.jpg", jpeg()), (b"images", b"/tmp/evil3.jpg", jpeg())]
    body, content_type = raw_multipart(parts)
    answer = farm.post("/task/new", data=body, headers={"Content-Type": content_type}).json()
    assert "uuid" in answer, answer
    uuid = answer["uuid"]
    info = wait_status(farm, uuid, (40,), timeout=90)
    assert info["imagesCount"] == 4
    stored = sorted(p.name for p in (farm.root / "storage" / uuid / "inputs").iterdir())
    assert stored == ["ab.jpg", "evil1.jpg", "evil2.jpg", "evil3.jpg"], stored

    allowed = (farm.root / "storage", *(farm.root.glob("*/scratch")))
    # other farms of this session hold names with "evil" of their own (hostile-name tests): skip them
    others = [f for f in farm.root.parent.iterdir() if f.is_dir() and f != farm.root]
    for path in _files_named(farm.root.parent, "evil"):
        if any(path.is_relative_to(other) for other in others):
            continue
        assert any(path.is_relative_to(a) for a in allowed), f"written outside the storage folder: {path}"
    for folder in (ROOT, ROOT.parent, Path("/tmp"), farm.root.parent):
        assert not list(folder.glob("evil*.jpg")), folder
    for entry in (farm.root / "storage").iterdir():  # only task folders at the top of the store
        assert entry.is_dir() and str(uuidlib.UUID(entry.name)) == entry.name, entry

    # chunked upload of a hostile name, and names that have no usable part at all
    session = farm.post("/task/new/init").json()["uuid"]
    body, content_type = raw_multipart([(b"images", b"../../evil4.jpg", jpeg())])
    assert farm.post(f"/task/new/upload/{session}", data=body,
                     headers={"Content-Type": content_type}).json() == {"success": True}
    # requests sends backslashes unescaped, and a quoted-string drops them: "....evil.jpg", a hidden name
    unescaped = farm.post(f"/task/new/upload/{session}", files=image_parts([("..\\..\\evil5.jpg", jpeg())]))
    assert unescaped.json() == {"error": "Invalid file name '....evil5.jpg': names starting with '.' are not "
                                         "accepted.", "noRetry": True}
    for name in (b"..", b"../", b".hidden.jpg", b"\x00\x01", b"a/..", b"dir/"):
        body, content_type = raw_multipart([(b"images", name, jpeg())])
        refused = farm.post(f"/task/new/upload/{session}", data=body, headers={"Content-Type": content_type})
        assert refused.status_code == 200 and refused.json().get("noRetry") is True, (name, refused.text)
        assert refused.json()["error"].startswith("Invalid file name"), refused.json()
    assert farm.post(f"/task/new/commit/{session}").json() == {"uuid": session}
    assert (farm.root / "storage" / session / "inputs" / "evil4.jpg").is_file()
    assert not list((farm.root / "storage").glob("evil*"))
    wait_status(farm, session, (40,), timeout=90)
    remove(farm, uuid, session)
    api_alive(farm)


def test_empty_image_huge_field_and_malformed_bodies(farm: Farm) -> None:
    # a 0-byte image is refused at upload: it can never be processed
    session = farm.post("/task/new/init").json()["uuid"]
    empty = farm.post(f"/task/new/upload/{session}", files=image_parts([("empty.jpg", b"")])).json()
    assert empty.get("noRetry") is True and "empty.jpg" in empty["error"], empty
    one = farm.post("/task/new", files=image_parts([("empty.jpg", b""), ("ok.jpg", jpeg())])).json()
    assert "empty.jpg" in one.get("error", ""), one

    # a form field over 2 MiB: a clear refusal, whichever route parses it
    huge = json.dumps([{"name": "feature-quality", "value": "x" * (2 * 1024 * 1024 + 10)}])
    for path in ("/task/new/init", "/task/new"):
        answer = farm.post(path, data={"options": huge}, files=image_parts(images(1)))
        assert answer.status_code == 200, (path, answer.status_code)
        assert "too large" in answer.json()["error"], answer.json()
        assert "0 MB" not in answer.json()["error"], answer.json()
    big = farm.post("/task/new/init", data={"options": "[" + " " * 600_000 + "]"}).json()
    assert "uuid" in big, "options of 600 kB are within the 2 MiB field limit"

    # malformed multipart: a truncated body and a boundary that never appears
    body, content_type = raw_multipart([(b"images", b"a.jpg", jpeg())])
    for data, ctype in ((body[: len(body) // 2], content_type), (b"garbage", "multipart/form-data; boundary=zz"),
                        (b"garbage", "multipart/form-data")):
        answer = farm.post("/task/new", data=data, headers={"Content-Type": ctype})
        assert answer.status_code == 200 and "error" in answer.json(), (ctype, answer.text[:200])
    answer = farm.post("/task/new/init", data=b"{not json", headers={"Content-Type": "application/json"})
    assert answer.status_code == 200 and answer.json()["error"].startswith("Malformed request")
    answer = farm.post("/task/cancel", data=b"{not json", headers={"Content-Type": "application/json"})
    assert answer.json()["success"] is False and answer.json()["error"].startswith("Malformed request")
    api_alive(farm)


def test_corrupt_image_zip_fails_the_task(farm: Farm) -> None:
    uuid = new_task(farm, [("images.zip", b"PK\x03\x04" + os.urandom(500))])
    info = wait_status(farm, uuid, (30,), timeout=60)
    message = info["status"]["errorMessage"]
    assert message.startswith("Invalid archive") and "images.zip" in message, message
    truncated = zip_bytes({"a.jpg": jpeg(50_000), "b.jpg": jpeg(50_000)})[:-200]
    other = new_task(farm, [("photos.zip", truncated), ("c.jpg", jpeg())])
    info = wait_status(farm, other, (30,), timeout=60)
    assert info["status"]["errorMessage"].startswith("Invalid archive"), info
    remove(farm, uuid, other)
    api_alive(farm)


# --- auth ---------------------------------------------------------------------------------------


def test_wrong_token_is_refused_on_every_route(farm: Farm) -> None:
    uuid = new_task(farm, images(1))
    session = farm.post("/task/new/init").json()["uuid"]
    bad = {"token": "wrong"}
    gets = ["/info", "/options", "/task/list", f"/task/{uuid}/info", f"/task/{uuid}/output",
            f"/task/{uuid}/download/all.zip"]
    posts: list[tuple[str, dict[str, Any]]] = [
        ("/task/new/init", {"data": {"name": "x"}}),
        (f"/task/new/upload/{session}", {"files": image_parts(images(1))}),
        (f"/task/new/commit/{session}", {}),
        ("/task/new", {"files": image_parts(images(1))}),
        ("/task/cancel", {"data": {"uuid": uuid}}),
        ("/task/remove", {"data": {"uuid": uuid}}),
        ("/task/restart", {"data": {"uuid": uuid}}),
    ]
    for path in gets:
        for params in (bad, {"token": ""}, {}):
            response = requests.get(farm.url + path, params=params, timeout=30)
            assert response.status_code == 200 and response.json() == TOKEN_ERROR, (path, params, response.text)
    for path, kwargs in posts:
        response = requests.post(farm.url + path, params=bad, timeout=30, **kwargs)
        assert response.status_code == 200, (path, response.status_code)
        assert response.json() == TOKEN_ERROR, (path, response.text)
    head = requests.head(f"{farm.url}/task/{uuid}/download/all.zip", params=bad, timeout=30)
    assert "Content-Disposition" not in head.headers
    # none of them did anything
    assert farm.get(f"/task/{session}/info").json() == {"error": f"{session} not found"}
    assert farm.post(f"/task/new/commit/{session}").json() == {"error": "Need at least 1 file."}
    assert wait_status(farm, uuid, (40,), timeout=90)["status"]["code"] == 40
    remove(farm, uuid)


def test_webhook_of_a_task_cancelled_before_any_worker_took_it(farm_factory) -> None:  # type: ignore[no-untyped-def]
    # no worker at all: the task waits, is cancelled, and its webhook waits in the outbox until a worker
    # exists to send it (deliveries live in Redis, not in the process that queued them)
    idle: Farm = farm_factory(workers=0)
    with local_server() as server:
        server.routes["/cancelled"] = lambda h: reply(h, 204, b"")
        uuid = new_task(idle, images(2), webhook=server.url("/cancelled"))
        assert idle.post("/task/cancel", data={"uuid": uuid}).json() == {"success": True}
        time.sleep(1.0)
        assert server.received == []
        idle.start_worker()
        [payload] = wait_webhooks(server, "/cancelled", 1)
        assert payload["uuid"] == uuid and payload["status"]["code"] == 50 and payload["images"] == []
        assert idle.redis.zcard("odmfarm:webhooks") == 0, "a 204 is a delivery"
        # removing a task does not announce it
        other = new_task(idle, images(1), webhook=server.url("/cancelled"))
        wait_status(idle, other, (40,))
        wait_webhooks(server, "/cancelled", 2)
        removed = new_task(idle, [("simulate-seconds-30.jpg", b"\xff\xd8" + b"0" * 100)],
                           webhook=server.url("/cancelled"))
        idle.post("/task/remove", data={"uuid": removed})
        time.sleep(1.5)
        assert sum(1 for r in server.received if r.path == "/cancelled") == 2


def test_random_option_payloads_never_break_the_api(farm: Farm) -> None:
    import random

    from tests.shared.test_options import _random_value

    rng = random.Random(7)
    names = [o["name"] for o in farm.get("/options").json()]
    for _ in range(150):
        items = [{"name": rng.choice(names), "value": _random_value(rng)} for _ in range(rng.randint(1, 4))]
        body = json.dumps(items, allow_nan=True) if rng.random() < 0.8 else json.dumps(_random_value(rng))
        answer = farm.post("/task/new/init", data={"options": body})
        assert answer.status_code == 200, body
        result = answer.json()
        assert set(result) in ({"uuid"}, {"error"}), result
    assert farm.get("/info").status_code == 200


def test_malformed_json_bodies_are_refused_clearly(farm: Farm) -> None:
    headers = {"Content-Type": "application/json"}
    assert farm.post("/task/new/init", data="{not json", headers=headers).json() == {
        "error": "Malformed request: the body is not valid JSON.", "noRetry": True}
    assert farm.post("/task/new/init", data="[1, 2]", headers=headers).json()["error"].startswith(
        "Malformed request: the JSON body must be an object")
    assert farm.post("/task/cancel", data="{oops", headers=headers).json() == {
        "success": False, "error": "Malformed request: the body is not valid JSON.", "noRetry": True}
    uuid = farm.post("/task/new/init", json={"name": "from json", "options": [{"name": "dsm", "value": True}]}).json()
    assert set(uuid) == {"uuid"}
