"""No secret leaks: the node token never reaches ODM's command line, the console, all.zip or any log file.

A fake ODM that knows `--split` and `--sm-cluster` runs on a real farm with a token. When given a cluster URL it
does what ODM's split-merge does through PyODM: asks the node's /info, sends a submodel (init, upload, commit),
waits for it, downloads its results and removes it; all through the URL it was given, without a token.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from tests.e2e.helpers import make_images, wait_status, zip_bytes
from tests.e2e.test_odm_engine import PROCESSING_RUN_PY
from tests.support.farm import Farm, _healthy, _spawn, free_port, wait_until
from tests.support.local_http import local_server, reply
from tests.workers.test_odm_engine import CONFIG_PY, make_fake_odm

TOKEN = "tok-5ecret-9f2c"
ZIP_PASSWORD = "zip-pa55word"
ZIP_SIGNATURE = "sig-0f-zipurl"

SPLIT_CONFIG_PY = CONFIG_PY.replace(
    '    flag(parser, "--dsm", "Build a DSM.")\n',
    '    flag(parser, "--dsm", "Build a DSM.")\n'
    '    parser.add_argument("--split", metavar="<positive integer>", action=StoreValue, default=999999,\n'
    '                        type=int, help="Average images per submodel.")\n'
    '    parser.add_argument("--sm-cluster", metavar="<string>", action=StoreValue, default=None,\n'
    '                        help="URL to a ClusterODM instance for distributing a split-merge workflow.")\n',
)

# Before the normal fake run: print the options as ODM's banner does, then act as split-merge.
SPLIT_RUN_PY = PROCESSING_RUN_PY.replace(
    'print("[INFO]    fake ODM running " + args.name, flush=True)\n',
    '''print("[INFO]    fake ODM running " + args.name, flush=True)
for key, value in sorted(vars(args).items()):
    print("[INFO]    %s: %s" % (key, value), flush=True)
# a program may print anything, even a secret it found: the node masks the ones it knows
print("[INFO]    found in my environment: " + os.environ.get("FAKE_ODM_LEAK", ""), flush=True)
extra = {"cmdline": open("/proc/self/cmdline", "rb").read().decode(errors="replace"),
         "environ": open("/proc/self/environ", "rb").read().decode(errors="replace")}
if args.sm_cluster:
    from pyodm import Node
    node = Node.from_url(args.sm_cluster, timeout=30)
    extra["info_engine"] = node.info().engine
    image = os.path.join(project, "images", sorted(os.listdir(os.path.join(project, "images")))[0])
    sub = node.create_task([image], {"dsm": True}, skip_post_processing=True)
    sub.wait_for_completion(interval=0.3)
    extra["submodel_files"] = sorted(os.listdir(sub.download_assets(os.path.join(project, "submodel"))))
    sub.remove()
    extra["submodel_uuid"] = sub.uuid
    print("[INFO]    submodel %s done" % sub.uuid, flush=True)
with open(os.path.join(project, "split.json"), "w") as f:
    json.dump(extra, f)
''',
)
assert SPLIT_RUN_PY != PROCESSING_RUN_PY and SPLIT_CONFIG_PY != CONFIG_PY


def start_api_with_access_log(farm: Farm) -> None:
    port = free_port()
    process = _spawn(["api", "--access-log"], {**farm.env, "ODM_FARM_PORT": str(port)}, farm.root / f"api-{port}.log")
    farm.apis.append(process)
    farm.ports.append(port)
    wait_until(lambda: _healthy(port), 30, f"API on {port} did not start:\n{process.tail()}")


def test_the_token_stays_out_of_argv_console_results_and_logs(farm_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    odm = make_fake_odm(tmp_path / "odm", config_py=SPLIT_CONFIG_PY)
    (odm / "run.py").write_text(SPLIT_RUN_PY)
    farm: Farm = farm_factory(apis=0, workers=0, token=TOKEN)
    start_api_with_access_log(farm)
    farm.env["ODM_FARM_PUBLIC_URL"] = farm.url
    farm.start_worker("odm1", ODM_FARM_ODM_PATH=str(odm), ODM_FARM_WORKER_GPU="false", FAKE_ODM_LEAK=TOKEN)

    task = farm.node().create_task(make_images(tmp_path / "in", 2), {"split": 1},
                                   outputs=["split.json", "recorded.json", "task_output.txt"])
    task.wait_for_completion(interval=0.3)
    out = Path(task.download_zip(str(tmp_path / "out")))
    with zipfile.ZipFile(out) as zf:
        split = json.loads(zf.read("split.json"))
        argv = json.loads(zf.read("recorded.json"))["argv"]
        task_output = zf.read("task_output.txt").decode()

    # ODM got a loopback URL without a token, and split-merge through it reached the farm
    cluster = argv[argv.index("--sm-cluster") + 1]
    assert cluster.startswith("http://127.0.0.1:") and "token" not in cluster, argv
    assert split["info_engine"] == "odm", "GET /info through the proxy answered"
    assert "all.zip" in split["submodel_files"] or split["submodel_files"], split
    assert farm.get(f"/task/{split['submodel_uuid']}/info").json().get("error"), "the submodel was removed"

    console = "\n".join(farm.get(f"/task/{task.uuid}/output").json())
    assert f"sm_cluster: {cluster}" in console and "submodel" in console
    assert "found in my environment: ***" in console
    assert "ODM_FARM_TOKEN" not in split["environ"], "the engine does not inherit the worker's secrets"
    for where, text in {
        "engine argv": " ".join(argv),
        "engine /proc cmdline": split["cmdline"],
        "console": console,
        "all.zip task_output.txt": task_output,
        **{p.name: p.log.read_text(errors="replace") for p in [*farm.apis, *farm.workers]},
    }.items():
        assert TOKEN not in text, f"the token leaked into the {where}"
    api_log = farm.apis[0].log.read_text()
    assert "GET /task/" in api_log and "token=***" in api_log, "the access log was on, with the token masked"


def test_zipurl_credentials_are_not_echoed(farm_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    farm: Farm = farm_factory(token=TOKEN)
    with local_server() as server:
        server.routes["/images.zip"] = lambda h: reply(h, 200, zip_bytes({"a.jpg": b"\xff\xd8\xff\xe0" + b"0" * 100}))
        url = server.url("/images.zip").replace("http://", f"http://farm:{ZIP_PASSWORD}@")
        url += f"?X-Amz-Signature={ZIP_SIGNATURE}"
        uuid = farm.post("/task/new", data={"zipurl": url}).json()["uuid"]
        wait_status(farm, uuid, (40, 30))
        console = "\n".join(farm.get(f"/task/{uuid}/output").json())
    assert "Downloading http://127.0.0.1:" in console
    for text in (console, *(p.log.read_text(errors="replace") for p in [*farm.apis, *farm.workers])):
        assert ZIP_PASSWORD not in text and ZIP_SIGNATURE not in text and TOKEN not in text
