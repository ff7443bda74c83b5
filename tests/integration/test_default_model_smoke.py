"""The default model (Qwen2.5-Coder-1.5B, assembled from 22 packages) loads and answers."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.conftest import start_server, stop_server


@pytest.mark.slow
def test_default_model_answers_one_question(session_tmp: Path) -> None:
    server = start_server(session_tmp, "default")
    try:
        client = openai.OpenAI(base_url=server.api, api_key="k", _strict_response_validation=True)
        completion = client.chat.completions.create(
            model="step-3.7-flash",
            messages=[
                {"role": "user", "content": "What is the capital of France? Answer in one word."}
            ],
            max_tokens=16,
            temperature=0,
            reasoning_effort="low",
        )
        assert "Paris" in completion.choices[0].message.content
        assert completion.model_dump()["choices"][0]["finish_reason"] == "stop"
        models = {m.id: m.model_dump() for m in client.models.list()}
        assert models["step-3.7-flash"]["stepflash"]["backend"] == (
            "embedded/qwen2.5-coder-1.5b-instruct-q4_k_m"
        )
    finally:
        stop_server(server)
