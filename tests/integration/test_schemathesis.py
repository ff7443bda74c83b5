"""Property-based requests generated from our own OpenAPI schema never get a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from stepflash.app import create_app
from stepflash.config import load_settings
from tests.conftest import LiveServer, start_server, stop_server

schema = schemathesis.openapi.from_dict(create_app(load_settings()).openapi()).include(
    path="/v1/chat/completions"
)


@pytest.fixture(scope="module")
def fuzz_server(session_tmp: Path) -> Iterator[LiveServer]:
    """A small context keeps every generated request short on the tiny model."""
    server = start_server(
        session_tmp,
        "tiny",
        {
            "STEPFLASH_EMBEDDED__N_CTX": "1024",
            "STEPFLASH_REASONING__BUDGET_MEDIUM": "8",
            "STEPFLASH_REASONING__BUDGET_HIGH": "16",
            "STEPFLASH_LIMITS__DEFAULT_MAX_TOKENS": "16",
            "STEPFLASH_EMBEDDED__QUEUE_SIZE": "64",
        },
    )
    yield server
    stop_server(server)


@schema.parametrize()
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case, fuzz_server: LiveServer) -> None:
    if isinstance(case.body, dict):
        case.body["model"] = (
            "step-3.7-flash"  # reach the engine, not only the 404 for unknown models
        )
    response = case.call(base_url=fuzz_server.url, timeout=120)
    case.validate_response(response, checks=[not_a_server_error])
