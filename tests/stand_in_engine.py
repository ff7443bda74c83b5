"""A stand-in for an engine executable (vllm, sglang, llama-server): a slow-starting server.

Installed by the tests under the engine's name on PATH. It logs like an engine, answers
`/health` with 503 while "loading" for STANDIN_LOAD_SECONDS, then 200, and records its argv
and pid so the tests can check what was launched and that it was stopped.
Set STANDIN_FAIL=1 to make it crash during loading instead.
"""

from __future__ import annotations

import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def _option(argv: list[str], name: str, default: str) -> str:
    return argv[argv.index(name) + 1] if name in argv else default


def main() -> None:
    argv = sys.argv[1:]
    record = Path(os.environ["STANDIN_RECORD"])
    record.write_text(json.dumps({"argv": argv, "pid": os.getpid()}))
    load_seconds = float(os.environ.get("STANDIN_LOAD_SECONDS", "1.5"))
    ready_at = time.monotonic() + load_seconds
    print("INFO loading weights: 0/4 shards", flush=True)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ready = time.monotonic() >= ready_at
            if self.path == "/health":
                self._answer(200 if ready else 503, {"status": "ok" if ready else "loading"})
            elif self.path == "/v1/models" and ready:
                self._answer(200, {"object": "list", "data": [{"id": "stand-in"}]})
            else:
                self._answer(404, {"error": "not found"})

        def _answer(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(
        (_option(argv, "--host", "127.0.0.1"), int(_option(argv, "--port", "8000"))), Handler
    )
    for shard in range(1, 5):
        time.sleep(load_seconds / 4)
        if os.environ.get("STANDIN_FAIL") == "1" and shard == 2:
            print("ERROR torch.OutOfMemoryError: CUDA out of memory", flush=True)
            sys.exit(3)
        print(f"INFO loading weights: {shard}/4 shards", flush=True)
    print("INFO engine ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
