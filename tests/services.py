"""Real Redis and PostgreSQL servers for tests, each on a free 127.0.0.1 port of its own.

The helpers (`start_redis`, `start_postgres`, their `stop_*`) need no pytest; the fixtures at the
end run one server of each kind per session. A missing server binary fails the tests that need
it rather than skipping them, since a skipped test must never pass for a tested one: `.ci/run`
installs both (Debian packages `redis-server` and `postgresql`).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

STARTUP_SECONDS = 60
POSTGRES_USER = "postgres"  # the cluster's superuser, and the system user that runs it as root


class ServiceError(RuntimeError):
    """A test server could not be started."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _missing(what: str) -> ServiceError:
    return ServiceError(f"{what} not found: `.ci/run` installs it (apt-get install {what})")


def _wait_ready(
    process: subprocess.Popen[bytes], ready: Callable[[], bool], name: str, log: Callable[[], str]
) -> None:
    """Poll `ready` until it holds; raise with the server's log if it exits or takes too long."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServiceError(f"{name} exited with {process.returncode}:\n{log()}")
        if ready():
            return
        time.sleep(0.05)
    raise ServiceError(f"{name} was not ready in {STARTUP_SECONDS}s:\n{log()}")


def _end(process: subprocess.Popen[bytes]) -> None:
    """Terminate `process` if it still runs, killing it when it does not stop in time."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_redis(tmp: Path) -> RedisServer:
    """Start a throwaway `redis-server` (no persistence) in `tmp` and wait until it answers."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise _missing("redis-server")
    port = free_port()
    log_path = tmp / f"redis-{port}.log"
    command = [binary, "--port", str(port), "--bind", "127.0.0.1"]
    command += ["--save", "", "--appendonly", "no", "--dir", str(tmp)]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    server = RedisServer(port, process, log_path)
    try:
        _wait_ready(process, lambda: _redis_pid(port) == process.pid, "redis-server", server.log)
    except ServiceError:
        stop_redis(server)
        raise
    return server


def _redis_pid(port: int) -> int | None:
    """The process id of the Redis answering on `port` (None while none does): PING alone could
    be answered by someone else's server that took the port first."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"INFO server\r\n")
            reply = sock.makefile("rb")
            header = reply.readline()  # a bulk string: b"$LENGTH\r\n", then the text
            info = reply.read(int(header[1:])) if header.startswith(b"$") else b""
    except (OSError, ValueError):
        return None
    match = re.search(rb"process_id:(\d+)", info)
    return int(match[1]) if match else None


def stop_redis(server: RedisServer) -> None:
    _end(server.process)


def postgres_bin_dir() -> Path:
    """Where initdb, postgres and pg_ctl live: Debian's newest /usr/lib/postgresql/N/bin, or the
    directory of an `initdb` on PATH."""
    found = Path("/usr/lib/postgresql").glob("*/bin/initdb")
    newest = max(found, key=lambda initdb: _version(initdb.parent.parent.name), default=None)
    initdb = newest or (Path(path) if (path := shutil.which("initdb")) else None)
    if initdb is None:
        raise _missing("postgresql")
    return initdb.resolve().parent


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


@dataclass
class PostgresServer:
    bin_dir: Path
    root: Path  # holds the data directory, the socket and the log; removed at stop
    port: int
    process: subprocess.Popen[bytes]
    run_as: str | None  # the system user running the server, when not ourselves

    @property
    def url(self) -> str:
        """The `postgres` maintenance database; use `create_database` for a test's own."""
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql+asyncpg://{POSTGRES_USER}@127.0.0.1:{self.port}/{name}"

    def create_database(self, name: str) -> str:
        """Create an empty database `name` (lowercase letters, digits, `_`); return its URL."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"not a plain database name: {name!r}")
        command = [str(self.bin_dir / "createdb"), *self._client_args(), name]
        _run(command, None, "createdb")
        return self.database_url(name)

    def log(self) -> str:
        return (self.root / "postgres.log").read_text(errors="replace")

    def _client_args(self) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(self.port), "-U", POSTGRES_USER]


def start_postgres() -> PostgresServer:
    """initdb a fresh cluster (trust auth, no fsync) in a new temporary directory and start it.

    As root it runs as the `postgres` system user, since initdb and postgres refuse root; the
    directory is then outside pytest's root-only tmp tree, where that user could not reach.
    """
    bin_dir = postgres_bin_dir()
    run_as = _postgres_system_user()
    root = Path(tempfile.mkdtemp(prefix="stepflash-postgres-"))
    if run_as is not None:
        shutil.chown(root, run_as, run_as)
    initdb = [str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", POSTGRES_USER]
    _run([*initdb, "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"], run_as, "initdb")
    port = free_port()
    command = [str(bin_dir / "postgres"), "-D", str(root / "data"), "-p", str(port)]
    command += ["-k", str(root), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]
    command += ["-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    with (root / "postgres.log").open("wb") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, cwd=root, **_as_user(run_as)
        )
    server = PostgresServer(bin_dir, root, port, process, run_as)
    try:
        _wait_ready(process, lambda: _postgres_ready(server), "postgres", server.log)
    except ServiceError:
        stop_postgres(server)
        raise
    return server


def _postgres_ready(server: PostgresServer) -> bool:
    """Whether our postmaster accepts connections, by the status line of its pid file (as
    `pg_ctl -w` reads it): unlike pg_isready, never answered by another server on the port."""
    try:
        lines = (server.root / "data" / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return False
    return len(lines) > 7 and lines[0] == str(server.process.pid) and lines[7].strip() == "ready"


def stop_postgres(server: PostgresServer) -> None:
    """Stop at once (`pg_ctl stop -m immediate`: no checkpoint for a throwaway cluster) and
    remove the cluster's directory."""
    if server.process.poll() is None:
        command = [str(server.bin_dir / "pg_ctl"), "stop", "-D", str(server.root / "data")]
        subprocess.run(
            [*command, "-m", "immediate", "-w", "-t", "30"],
            capture_output=True,
            cwd=server.root,
            **_as_user(server.run_as),
        )
    _end(server.process)
    shutil.rmtree(server.root, ignore_errors=True)


def _postgres_system_user() -> str | None:
    """The user to run PostgreSQL as: `postgres` when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(POSTGRES_USER)
    except KeyError:
        raise ServiceError(
            f"no `{POSTGRES_USER}` system user: `.ci/run` installs postgresql, which adds it"
        ) from None
    return POSTGRES_USER


def _as_user(user: str | None) -> dict[str, Any]:
    """Popen arguments that run a command as `user` with only its own groups (None: as we are)."""
    return {} if user is None else {"user": user, "group": user, "extra_groups": []}


def _run(command: list[str], user: str | None, name: str) -> None:
    cwd = tempfile.gettempdir()
    result = subprocess.run(
        command, capture_output=True, timeout=STARTUP_SECONDS, cwd=cwd, **_as_user(user)
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).decode(errors="replace")
        raise ServiceError(f"{name} failed with {result.returncode}:\n{output}")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis for the whole session; tests keep apart by key prefix (or their own database)."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    stop_redis(server)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster for the whole session; tests take their own database from it."""
    server = start_postgres()
    yield server
    stop_postgres(server)


@pytest.fixture
def postgres_database(postgres_server: PostgresServer) -> str:
    """The URL of a new, empty database for this test alone."""
    return postgres_server.create_database(f"test_{uuid.uuid4().hex[:16]}")
