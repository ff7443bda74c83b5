"""`stepflash deploy plan|launch|compose` as users run them.

`launch` starts a stand-in engine executable (tests/stand_in_engine.py, installed on PATH
under the engine's name) that loads slowly, logs like an engine and then answers /health.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from stepflash.config import load_settings
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
STEPFLASH = [sys.executable, "-m", "stepflash"]
STAND_IN = ROOT / "tests" / "stand_in_engine.py"
VLLM_35_FP8 = ["-H", "4xH200", "-m", "step-3.5-flash", "--engine", "vllm", "-q", "fp8"]


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STEPFLASH, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        cwd=cwd,
    )


def install_stand_in(bin_dir: Path, name: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / name
    script.write_text(
        f"#!{sys.executable}\nimport runpy\n"
        f"runpy.run_path({str(STAND_IN)!r}, run_name='__main__')\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(predicate, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.1)


# --- plan ----------------------------------------------------------------------------------


def test_plan_json_fits_and_exit_code_zero() -> None:
    result = run("deploy", "plan", *VLLM_35_FP8, "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["fits"] is True
    assert plan["layout"] == "dp+ep"
    assert plan["command"][:3] == ["vllm", "serve", "stepfun-ai/Step-3.5-Flash-FP8"]
    assert plan["backend"]["replicas"] == ["http://127.0.0.1:30000/v1"]
    assert plan["docker"][:3] == ["docker", "run", "--rm"]


def test_plan_that_does_not_fit_exits_one_with_the_alternative() -> None:
    result = run("deploy", "plan", "-H", "4xH200", "-q", "nvfp4", "--engine", "sglang")
    assert result.returncode == 1
    assert "does not fit" in result.stdout
    assert "Blackwell" in result.stdout
    assert "nearest that fits: change quantization fp8" in result.stdout
    assert "stepfun-ai/Step-3.7-Flash-FP8" in result.stdout


def test_plan_rejects_unknown_hardware_with_the_known_list() -> None:
    result = run("deploy", "plan", "-H", "4xA100")
    assert result.returncode == 2
    assert "unknown hardware 'A100'" in result.stderr and "H200" in result.stderr


# --- launch --------------------------------------------------------------------------------


@pytest.fixture
def engine_bin(tmp_path: Path) -> Path:
    install_stand_in(tmp_path / "bin", "vllm")
    return tmp_path / "bin"


def launch(tmp_path: Path, engine_bin: Path, port: int, **env: str) -> subprocess.Popen[str]:
    environment = {
        **os.environ,
        "PATH": f"{engine_bin}{os.pathsep}{os.environ['PATH']}",
        "STANDIN_RECORD": str(tmp_path / "record.json"),
        "COLUMNS": "200",
        **env,
    }
    return subprocess.Popen(
        [
            *STEPFLASH,
            "deploy",
            "launch",
            *VLLM_35_FP8,
            "--port",
            str(port),
            "--config",
            str(tmp_path / "stepflash.toml"),
            "--timeout",
            "30",
        ],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )


def test_launch_waits_for_health_writes_the_backend_and_stops_the_engine(
    tmp_path: Path, engine_bin: Path
) -> None:
    config = tmp_path / "stepflash.toml"
    config.write_text(
        '# my settings\nport = 8100\n\n[[models]]\nname = "step-3.5-flash"\n'
        'backend = "openai"\nreplicas = ["http://10.0.0.9:8000/v1"]\n\n'
        '[[models]]\nname = "other"\nbackend = "embedded"\n'
    )
    port = free_port()
    process = launch(tmp_path, engine_bin, port)
    try:
        wait_for(
            lambda: "step-3.5-flash" in config.read_text() and f":{port}/v1" in config.read_text()
        )
        record = json.loads((tmp_path / "record.json").read_text())
        # what ran is exactly the planned command
        planned = json.loads(
            run("deploy", "plan", *VLLM_35_FP8, "--port", str(port), "--json").stdout
        )
        assert record["argv"] == planned["command"][1:]
        assert pid_alive(record["pid"])
        settings = load_settings(config)
        assert settings.port == 8100
        assert [m.name for m in settings.models] == ["step-3.5-flash", "other"]
        assert settings.models[0].replicas == [f"http://127.0.0.1:{port}/v1"]
        assert "# my settings" in config.read_text()
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "loading weights: 4/4 shards" in output  # the engine's log streamed through
    assert "vllm is healthy after" in output
    assert "replaced step-3.5-flash" in output
    wait_for(lambda: not pid_alive(record["pid"]), 10)


def test_launch_reports_an_engine_that_dies_while_loading(tmp_path: Path, engine_bin: Path) -> None:
    process = launch(tmp_path, engine_bin, free_port(), STANDIN_FAIL="1")
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "exited with code 3 before it became healthy" in output
    assert "CUDA out of memory" in output
    assert not (tmp_path / "stepflash.toml").exists()


def test_launch_without_the_engine_says_what_to_install(tmp_path: Path) -> None:
    result = run(
        "deploy",
        "launch",
        *VLLM_35_FP8,
        "--config",
        str(tmp_path / "s.toml"),
        env={"PATH": str(tmp_path)},
    )
    assert result.returncode == 1
    assert "vllm is not installed" in result.stderr
    assert "pip install" in result.stderr
    assert "docker run" in result.stderr
    assert not (tmp_path / "s.toml").exists()


def test_launch_refuses_a_plan_that_does_not_fit(tmp_path: Path) -> None:
    result = run(
        "deploy", "launch", "-H", "1xH100", "-q", "bf16", "--config", str(tmp_path / "s.toml")
    )
    assert result.returncode == 1
    assert "does not fit" in result.stderr


# --- compose -------------------------------------------------------------------------------


def test_compose_writes_a_checked_deployment(tmp_path: Path) -> None:
    folder = tmp_path / "deploy"
    result = run("deploy", "compose", *VLLM_35_FP8, "--replicas", "2", "-o", str(folder))
    assert result.returncode == 0, result.stderr
    compose = yaml.safe_load((folder / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"engine", "stepflash-1", "stepflash-2", "postgres", "redis"}

    engine = services["engine"]
    planned = json.loads(run("deploy", "plan", *VLLM_35_FP8, "--json").stdout)["command"]
    assert engine["entrypoint"] == ["vllm"]
    assert engine["command"][engine["command"].index("--host") + 1] == "0.0.0.0"
    assert [w for w in engine["command"] if w != "0.0.0.0"] == [
        w for w in planned[1:] if w != "127.0.0.1"
    ]
    devices = engine["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 4, "capabilities": ["gpu"]}]
    assert "/health" in " ".join(engine["healthcheck"]["test"])

    for name in ("stepflash-1", "stepflash-2"):
        service = services[name]
        assert service["depends_on"]["engine"] == {"condition": "service_healthy"}
        assert service["depends_on"]["postgres"] == {"condition": "service_healthy"}
        assert all(port.startswith("127.0.0.1:") for port in service["ports"])
    assert services["postgres"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]

    settings = load_settings(folder / "stepflash.toml")
    assert settings.models[0].replicas == ["http://engine:30000/v1"]
    assert settings.host == "0.0.0.0"
    secrets_file = folder / ".env"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    assert "POSTGRES_PASSWORD=" in secrets_file.read_text()
    assert secrets_file.read_text() not in result.stdout + result.stderr

    again = run("deploy", "compose", *VLLM_35_FP8, "-o", str(folder))
    assert again.returncode == 1 and "--force" in again.stderr
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        subprocess.run(["docker", "compose", "config", "-q"], cwd=folder, check=True)


def test_compose_refuses_hardware_a_container_cannot_reach(tmp_path: Path) -> None:
    result = run(
        "deploy", "compose", "-H", "mac-studio", "--context", "16384", "-o", str(tmp_path / "d")
    )
    assert result.returncode == 1
    assert "run it natively" in result.stderr
    assert not (tmp_path / "d" / "compose.yaml").exists()
