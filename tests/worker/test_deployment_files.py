"""docker-compose.yml and the Dockerfile, checked without Docker: structure and env names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from glai_common.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _workers(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if name.startswith("worker")}


def test_services_and_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "api"} <= set(services)
    assert _workers(compose)
    assert services["migrate"]["restart"] == "no"
    assert "upgrade" in " ".join(services["migrate"]["command"])
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ["api", *_workers(compose)]:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name
    assert services["api"]["command"][:2] == ["uvicorn", "api.main:app"]
    for name in ("postgres", "redis", "api", *_workers(compose)):
        assert services[name]["healthcheck"]["test"], name


def test_every_glai_variable_is_a_settings_field(compose: dict[str, Any]) -> None:
    fields = set(Settings.model_fields)
    seen: set[str] = set()
    for name, service in compose["services"].items():
        for key in service.get("environment") or {}:
            if key.startswith("GLAI_"):
                seen.add(key)
                assert key.removeprefix("GLAI_").lower() in fields, f"{name}: {key} is not a Settings field"
    assert {"GLAI_DATABASE_URL", "GLAI_BROKER_URL", "GLAI_DATA_DIR"} <= seen
    env = compose["services"]["api"]["environment"]
    assert env["GLAI_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["GLAI_BROKER_URL"].startswith("redis://")


def _pools(compose: dict[str, Any]) -> list[str]:
    return Settings(queues=compose["x-glai-env"]["GLAI_QUEUES"]).queues


def test_one_worker_per_gpu(compose: dict[str, Any]) -> None:
    device_ids: list[str] = []
    for name, worker in _workers(compose).items():
        command = worker["command"]
        assert command[:2] == ["glai", "worker"], name  # one job at a time, solo pool (worker_cmd)
        assert command[command.index("--queues") + 1] == _pools(compose)[0], name
        assert "--cpu" not in command, name
        devices = worker["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"], name
        device_ids.extend(devices[0]["device_ids"])
        assert worker["environment"]["GLAI_WORKER_HEALTH_FILE"], name
    assert len(device_ids) == len(set(device_ids))  # no GPU shared by two workers


def test_dockerfile_installs_torch_before_the_project() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    torch_at = text.index('pip install "$TORCH_SPEC"')
    project_at = text.index("pip install /app")
    assert torch_at < project_at


def test_artifacts_live_in_minio_and_no_volume_is_shared_with_the_api(compose: dict[str, Any]) -> None:
    services = compose["services"]
    env = services["api"]["environment"]
    assert env["GLAI_STORAGE_URL"].startswith("s3://") and env["GLAI_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert services["minio"]["environment"]["MINIO_ROOT_USER"] == env["GLAI_S3_ACCESS_KEY_ID"]
    assert services["minio"]["environment"]["MINIO_ROOT_PASSWORD"] == env["GLAI_S3_SECRET_ACCESS_KEY"]
    Settings(**{k.removeprefix("GLAI_").lower(): v for k, v in env.items() if k.startswith("GLAI_")})
    assert services["minio"]["healthcheck"]["test"]
    assert services["migrate"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "prepare_storage" in " ".join(services["migrate"]["command"])  # creates the bucket
    assert not services["api"].get("volumes")  # a second machine needs nothing from this one's disks
    for name, worker in _workers(compose).items():
        assert worker["environment"]["GLAI_STORAGE_URL"] == env["GLAI_STORAGE_URL"], name
        assert [v.split(":")[1] for v in worker.get("volumes", [])] == ["/data/staging"], name


def test_the_cpu_worker_serves_the_cpu_pool_without_a_gpu(compose: dict[str, Any]) -> None:
    worker = compose["services"]["cpu-worker"]
    command = worker["command"]
    assert command[:2] == ["glai", "worker"] and "--cpu" in command
    assert command[command.index("--queues") + 1] == "cpu" and "cpu" in _pools(compose)
    assert "deploy" not in worker and worker["profiles"] == ["cpu"]  # opt-in, reserves no GPU
    assert worker["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert worker["environment"]["GLAI_WORKER_HEALTH_FILE"]
