"""A ready deployment folder: docker compose for the engine, stepflash replicas, PostgreSQL, Redis.

What is written: `compose.yaml`, the matching `stepflash.toml`, and `.env` with freshly
generated database and Redis passwords (mode 0600, never printed). Every port is published
on the host's loopback only; put a TLS proxy in front to expose stepflash.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
import yaml

from stepflash import __version__
from stepflash.config import load_settings
from stepflash.deploy.engines import RECIPES
from stepflash.deploy.hardware import Vendor
from stepflash.deploy.planner import HF_CACHE_MOUNT, Plan

ENGINE_SERVICE = "engine"
STEPFLASH_PORT = 8000
ENGINE_START_SECONDS = 1800  # loading a few hundred GB of weights


class ComposeRefused(ValueError):
    """The plan cannot run under Docker (e.g. the Apple GPU is out of a container's reach)."""


@dataclass(frozen=True)
class ComposeFiles:
    compose: dict[str, Any]
    stepflash_toml: str


def _healthcheck(test: list[str], start_seconds: int = 30) -> dict[str, Any]:
    return {
        "test": test,
        "interval": "10s",
        "timeout": "5s",
        "retries": 5,
        "start_period": f"{start_seconds}s",
    }


def _engine_service(plan: Plan) -> dict[str, Any]:
    target = plan.target
    recipe = RECIPES[target.engine]
    inside = recipe.command(target.with_changes(host="0.0.0.0"))
    if inside.image is None:
        raise ComposeRefused(
            f"{target.engine} on {target.hardware.profile.name} has no container image that "
            "can reach the accelerator; run it natively with `stepflash deploy launch`"
        )
    service: dict[str, Any] = {"image": inside.image}
    if inside.docker_entrypoint:
        service["entrypoint"] = [inside.argv[0]]
    service["command"] = inside.argv[1:]
    service["environment"] = {**inside.environment, "HF_TOKEN": "${HF_TOKEN:-}"}
    service["volumes"] = [HF_CACHE_MOUNT]
    service["ports"] = [f"127.0.0.1:{target.port}:{target.port}"]
    service["ipc"] = "host"
    service["shm_size"] = "32g"
    service.update(_accelerators(plan))
    health = f"curl -fsS http://localhost:{target.port}{recipe.health_path} || exit 1"
    service["healthcheck"] = _healthcheck(["CMD-SHELL", health], ENGINE_START_SECONDS)
    service["restart"] = "unless-stopped"
    return service


def _accelerators(plan: Plan) -> dict[str, Any]:
    profile, count = plan.target.hardware.profile, plan.target.hardware.count
    if profile.vendor is Vendor.AMD:
        devices = ["/dev/dri"] if profile.unified else ["/dev/kfd", "/dev/dri"]
        return {"devices": devices, "group_add": ["video"], "security_opt": ["seccomp=unconfined"]}
    reservation = {"driver": "nvidia", "count": count, "capabilities": ["gpu"]}
    return {"deploy": {"resources": {"reservations": {"devices": [reservation]}}}}


def _image_source() -> dict[str, Any]:
    """Build the image from this checkout when there is one; else use STEPFLASH_IMAGE."""
    source = Path(__file__).resolve().parents[2]
    image = f"${{STEPFLASH_IMAGE:-stepflash:{__version__}}}"
    if (source / "Dockerfile").is_file() and (source / "pyproject.toml").is_file():
        return {"image": image, "build": str(source)}
    return {"image": image}


def _stepflash_service(index: int) -> dict[str, Any]:
    probe = (
        "import urllib.request; "
        f"urllib.request.urlopen('http://127.0.0.1:{STEPFLASH_PORT}/health', timeout=3)"
    )
    return {
        **_image_source(),
        "command": ["stepflash", "serve", "--config", "/etc/stepflash/stepflash.toml"],
        "volumes": ["./stepflash.toml:/etc/stepflash/stepflash.toml:ro"],
        "ports": [f"127.0.0.1:{STEPFLASH_PORT + index}:{STEPFLASH_PORT}"],
        "depends_on": {
            ENGINE_SERVICE: {"condition": "service_healthy"},
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        },
        "healthcheck": _healthcheck(["CMD", "python", "-c", probe]),
        "restart": "unless-stopped",
    }


def _data_services() -> dict[str, Any]:
    return {
        "postgres": {
            "image": "postgres:17",
            "environment": {
                "POSTGRES_USER": "stepflash",
                "POSTGRES_DB": "stepflash",
                "POSTGRES_PASSWORD": "${POSTGRES_PASSWORD:?run from the folder holding .env}",
            },
            "volumes": ["postgres-data:/var/lib/postgresql/data"],
            "healthcheck": _healthcheck(["CMD", "pg_isready", "-U", "stepflash"]),
            "restart": "unless-stopped",
        },
        "redis": {
            "image": "redis:7",
            "command": ["redis-server", "--requirepass", "${REDIS_PASSWORD:?missing}"],
            "healthcheck": _healthcheck(
                ["CMD-SHELL", 'redis-cli -a "$$REDIS_PASSWORD" --no-auth-warning ping']
            ),
            "environment": {"REDIS_PASSWORD": "${REDIS_PASSWORD:?missing}"},
            "restart": "unless-stopped",
        },
    }


def _stepflash_toml(plan: Plan) -> str:
    document = tomlkit.document()
    document.add(tomlkit.comment("Written by `stepflash deploy compose`; edit freely."))
    document["host"] = "0.0.0.0"
    document["port"] = STEPFLASH_PORT
    allow_open = tomlkit.item(True)
    allow_open.comment("no API keys yet: compose publishes stepflash on 127.0.0.1 only")
    document["allow_open"] = allow_open
    engine_url = f"http://{ENGINE_SERVICE}:{plan.target.port}/v1"
    entry = RECIPES[plan.target.engine].backend_entry(plan.target, engine_url)
    models = tomlkit.aot()
    models.append(tomlkit.item(entry))
    document["models"] = models
    return tomlkit.dumps(document)


def compose_files(plan: Plan, replicas: int) -> ComposeFiles:
    """The compose document and the stepflash.toml for `replicas` stepflash servers."""
    services = {ENGINE_SERVICE: _engine_service(plan)}
    services.update({f"stepflash-{i + 1}": _stepflash_service(i) for i in range(replicas)})
    services.update(_data_services())
    compose = {
        "name": f"stepflash-{plan.target.model.name.replace('.', '')}",
        "services": services,
        "volumes": {"postgres-data": {}},
    }
    return ComposeFiles(compose, _stepflash_toml(plan))


def write_compose(plan: Plan, folder: Path, replicas: int, force: bool) -> list[Path]:
    """Write the folder; refuses to overwrite unless `force` (the .env keeps its secrets)."""
    files = compose_files(plan, replicas)
    folder.mkdir(parents=True, exist_ok=True)
    compose_path, toml_path, env_path = (
        folder / "compose.yaml",
        folder / "stepflash.toml",
        folder / ".env",
    )
    existing = [p for p in (compose_path, toml_path) if p.exists()]
    if existing and not force:
        names = ", ".join(str(p) for p in existing)
        raise FileExistsError(f"{names} already exist; pass --force to overwrite")
    toml_path.write_text(files.stepflash_toml)
    load_settings(toml_path)  # the written configuration must load
    compose_path.write_text(yaml.safe_dump(files.compose, sort_keys=False, width=100))
    if not env_path.exists():
        _write_secrets(env_path)
    return [compose_path, toml_path, env_path]


def _write_secrets(path: Path) -> None:
    text = (
        f"POSTGRES_PASSWORD={secrets.token_urlsafe(24)}\n"
        f"REDIS_PASSWORD={secrets.token_urlsafe(24)}\n"
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
