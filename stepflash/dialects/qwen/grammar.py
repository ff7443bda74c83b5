"""Grammars that make the model's output well-formed when the caller requires it.

llama.cpp constrains sampling with GBNF; we build it from JSON Schema with llama.cpp's own
converter. A required or named tool call is constrained to the bare JSON call shape
(`{"name": ..., "arguments": {...}}`), which the tool parser reads like any other call.
"""

from __future__ import annotations

import json
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from stepflash.core.errors import invalid
from stepflash.core.request import ChatRequest, ResponseFormatType, Tool


def _arguments_schema(tool: Tool) -> dict[str, Any]:
    parameters = tool.parameters
    if parameters.get("type") != "object":
        return {"type": "object"}
    return parameters


def forced_call_schema(tools: tuple[Tool, ...]) -> dict[str, Any]:
    """A schema that only admits a call to one of `tools` with arguments matching its schema."""
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": _arguments_schema(tool)},
            "required": ["name", "arguments"],
        }
        for tool in tools
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def _compile(schema: dict[str, Any], param: str) -> str:
    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except (AssertionError, ValueError, KeyError, TypeError, RecursionError) as error:
        raise invalid(f"cannot enforce this JSON schema: {error}", param) from error


def grammar_for(request: ChatRequest) -> str | None:
    """The GBNF grammar the answer must follow, or None when it is free text."""
    if request.tool_choice.forces_call and request.offered_tools:
        return _compile(forced_call_schema(request.offered_tools), "tools")
    match request.response_format.type:
        case ResponseFormatType.JSON_OBJECT:
            return JSON_GBNF
        case ResponseFormatType.JSON_SCHEMA:
            return _compile(
                request.response_format.schema or {}, "response_format.json_schema.schema"
            )
    return None
