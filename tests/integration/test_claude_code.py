"""Claude Code itself, headless, against stepflash: it must finish a task that needs a tool.

The upstream is a scripted Step-format agent: asked with Claude Code's tools offered, it calls
`Read` on the file; given the tool result, it answers with what the file says. Everything in
between — Claude Code's requests (system messages, tools, thinking, streaming), our Messages
API, the canonical request, the openai backend — is the real thing.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveServer, start_server, stop_server
from tests.upstreams import Script, ScriptedUpstream

CLAUDE = Path(__file__).resolve().parents[2] / ".venv" / "node" / "node_modules" / ".bin" / "claude"
SECRET = "The secret word is marmalade-42."


def agent(note: Path) -> Any:
    def respond(body: dict[str, Any]) -> Script:
        last = body["messages"][-1]
        offered = {tool["function"]["name"] for tool in body.get("tools") or ()}
        if last["role"] == "tool":
            return Script(
                reasoning=["I have read it."], content=["The note says: ", last["content"]]
            )
        if "Read" in offered:
            arguments = json.dumps({"file_path": str(note)})
            return Script(
                reasoning=["I should read the file first."],
                content=[],
                tool_calls=[("Read", [arguments])],
                finish="tool_calls",
            )
        return Script(reasoning=["A side request."], content=["ok"])

    return respond


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "work").mkdir()
    (tmp_path / "home").mkdir()
    (tmp_path / "work" / "note.txt").write_text(SECRET + "\n")
    return tmp_path


@pytest.fixture
def gateway(workspace: Path) -> Iterator[tuple[LiveServer, ScriptedUpstream]]:
    upstream = ScriptedUpstream("sglang", responder=agent(workspace / "work" / "note.txt")).start()
    config = workspace / "stepflash.toml"
    config.write_text(
        f'[[models]]\nname = "step-3.7-flash"\nbackend = "openai"\nreplicas = ["{upstream.url}"]\n'
    )
    server = start_server(workspace, None, config=config)
    yield server, upstream
    stop_server(server)
    upstream.stop()


def test_claude_code_reads_a_file_through_stepflash(
    workspace: Path, gateway: tuple[LiveServer, ScriptedUpstream]
) -> None:
    assert CLAUDE.exists(), "Claude Code is installed by `scripts/setup --test`"
    server, upstream = gateway
    env = {
        **os.environ,
        "HOME": str(workspace / "home"),
        "ANTHROPIC_BASE_URL": server.url,
        "ANTHROPIC_API_KEY": "sk-stepflash-test",
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": "step-3.7-flash",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    command = [
        str(CLAUDE),
        "-p",
        "What does note.txt say?",
        "--model",
        "step-3.7-flash",
        "--output-format",
        "json",
        "--allowedTools",
        "Read",
    ]
    finished = subprocess.run(
        command, cwd=workspace / "work", env=env, capture_output=True, text=True, timeout=180
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    report = json.loads(finished.stdout)
    assert report["is_error"] is False and report["api_error_status"] is None, report
    assert report["num_turns"] >= 2, "the answer needed a tool call"
    assert SECRET in report["result"]
    tool_results = [
        message["content"]
        for body in upstream.requests
        for message in body.get("messages", ())
        if message["role"] == "tool"
    ]
    assert any(SECRET in result for result in tool_results), "Claude Code ran Read for real"
    assert "Traceback" not in server.log()
