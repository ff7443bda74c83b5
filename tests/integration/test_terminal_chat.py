"""`stepflash chat` in a real pseudo-terminal: streaming, reasoning apart, Ctrl-C, multi-line."""

from __future__ import annotations

import signal
import sys

import pexpect
import pytest

from tests.conftest import LiveServer

# prompt_toolkit turns on bracketed paste once the terminal is in raw mode and the prompt is
# drawn: keys sent after this are read as keys, not by the cooked-mode line discipline.
PROMPT = "\x1b[?2004h"
ENTER = "\r"  # what a terminal sends for the Enter key


@pytest.fixture
def chat(tiny_server: LiveServer):
    child = pexpect.spawn(
        sys.executable,
        ["-m", "stepflash", "chat", "--url", tiny_server.url, "--effort", "high"],
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 200),
        # A test run started in the background inherits SIGINT ignored, and Python keeps an
        # ignored SIGINT ignored: the chat would never see the Ctrl-C the test sends.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        env={
            "PATH": "/usr/bin:/bin",
            "TERM": "xterm",
            "NO_COLOR": "1",
            "PROMPT_TOOLKIT_NO_CPR": "1",
        },
    )
    child.expect(r"stepflash chat.* with .*step-.*flash")
    child.expect_exact(PROMPT)
    yield child
    child.terminate(force=True)


def test_answer_streams_with_reasoning_shown_apart(chat: pexpect.spawn) -> None:
    chat.send("Why is the sky blue?" + ENTER)
    chat.expect_exact("thinking: ")
    chat.expect(r"(\d+) prompt \+ (\d+) completion tokens")
    assert int(chat.match.group(2)) > 0
    chat.expect_exact(PROMPT)
    chat.sendeof()
    chat.expect(pexpect.EOF)


def test_multi_line_input_and_ctrl_c_stops_only_the_answer(chat: pexpect.spawn) -> None:
    chat.send("Write a long poem\x1b" + ENTER)  # Esc, Enter: a new line, not a send
    chat.send("about the sea." + ENTER)
    chat.expect_exact("thinking: ")
    chat.sendintr()
    chat.expect("stopped")
    chat.expect_exact(PROMPT)
    assert chat.isalive(), "Ctrl-C stops the answer, not the chat"
    chat.send("/effort low" + ENTER)
    chat.expect_exact("effort is now low")
    chat.send("/exit" + ENTER)
    chat.expect(pexpect.EOF)
