"""Run a planned engine as a child process: stream its log, wait for health, stop it cleanly.

The child gets its own process group (so stopping it stops its workers too) and, on Linux,
dies with the launcher even when the launcher is killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

POLL_SECONDS = 0.5
STOP_GRACE_SECONDS = 15.0


class EngineFailed(RuntimeError):
    """The engine exited or never became healthy; the message carries its last log lines."""


def _die_with_parent() -> None:
    """In the child, before exec: receive SIGKILL when the launcher dies (Linux only)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class EngineProcess:
    argv: list[str]
    environment: dict[str, str]
    health_url: str
    on_line: Callable[[str], None]
    process: subprocess.Popen[str] | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))
    _reader: threading.Thread | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.argv,
            env={**os.environ, **self.environment},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        self._reader = threading.Thread(target=self._pump, daemon=True, name="engine-log")
        self._reader.start()

    def _pump(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            line = line.rstrip("\n")
            self.tail.append(line)
            self.on_line(line)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.health_url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def wait_healthy(self, timeout: float, on_tick: Callable[[float], None]) -> float:
        """Seconds until the health check passed; raises EngineFailed on exit or timeout."""
        assert self.process is not None
        started = time.monotonic()
        while True:
            elapsed = time.monotonic() - started
            on_tick(elapsed)
            if self.process.poll() is not None:
                self._drain()
                raise EngineFailed(
                    f"the engine exited with code {self.process.returncode} before it became "
                    f"healthy; its last lines:\n" + "\n".join(self.tail)
                )
            if self.healthy():
                return elapsed
            if elapsed > timeout:
                self.stop()
                raise EngineFailed(
                    f"the engine was not healthy at {self.health_url} after {timeout:.0f} s; "
                    "stopped it. Its last lines:\n" + "\n".join(self.tail)
                )
            time.sleep(POLL_SECONDS)

    def _drain(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=2)

    def wait(self) -> int:
        assert self.process is not None
        code = self.process.wait()
        self._drain()
        return code

    def stop(self) -> int | None:
        """SIGTERM the whole process group, then SIGKILL after a grace period."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        group = os.getpgid(self.process.pid)
        os.killpg(group, signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(group, signal.SIGKILL)
            return self.process.wait()
