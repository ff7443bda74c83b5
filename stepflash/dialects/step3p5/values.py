"""Parameter values of Step tool calls: how the template writes them, how the parser reads them.

Step writes every argument as raw text between `<parameter=KEY>` tags, so a value's JSON type
is lost on the way out and has to be recovered from the tool's JSON schema on the way back in.
Both directions live here so that what the template writes is exactly what the parser reads.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Callable
from typing import Any

Schema = dict[str, Any]

_MISSING: Any = object()  # a reader's "this text is not of my type"
_INTEGER = re.compile(r"[-+]?\d+", re.ASCII)
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", re.ASCII)
_NULLS = (
    "null",
    "None",
)  # JSON's spelling and Python's str(None), which Step's own template writes
_BOOLEANS = {"true": True, "false": False}  # compared lower-cased: Python's `True` is accepted too


def format_value(value: Any) -> str:
    """The text written between the parameter tags: strings raw, everything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def declared_types(schema: Schema) -> tuple[str, ...]:
    """The JSON types a parameter schema admits, in the order it lists them; () when it says none.

    A bare `enum` of strings is a string parameter; other untyped schemas (`anyOf`, `{}`) have
    no single type and are read as JSON.
    """
    kind = schema.get("type")
    if isinstance(kind, str):
        return (kind,)
    if isinstance(kind, list):
        return tuple(item for item in kind if isinstance(item, str))
    enum = schema.get("enum")
    if isinstance(enum, list) and enum and all(isinstance(item, str) for item in enum):
        return ("string",)
    return ()


def is_plain_string(schema: Schema | None) -> bool:
    """Whether the value's text is its value, so the parser may stream it before it ends."""
    return schema is None or declared_types(schema) == ("string",)


def parse_value(text: str, schema: Schema | None) -> Any:
    """Read a parameter's text (already stripped of its framing newlines) by its schema.

    An undeclared parameter is a string. A declared one is tried against each of its types in
    order; a string type always fits (but `null` wins for `["string", "null"]` when the text
    says null). Text that fits none of its types is read as JSON, then as a Python literal,
    and is otherwise kept as the raw string: a value is never dropped.
    """
    if schema is None:
        return text
    types = declared_types(schema)
    stripped = text.strip()
    if "null" in types and stripped in _NULLS:
        return None
    if "string" in types:
        return text
    for kind in types:
        reader = _READERS.get(kind)
        value = reader(stripped) if reader else _MISSING
        if value is not _MISSING:
            return value
    return _read_json_like(text)


def _read_integer(text: str) -> Any:
    value = _read_number(text)
    return value if isinstance(value, int) else _MISSING


def _read_number(text: str) -> Any:
    """An int when the number is integral (`3.0` → 3), a float otherwise; never NaN or ±inf."""
    if _INTEGER.fullmatch(text):
        return int(text)
    if not _NUMBER.fullmatch(text):
        return _MISSING
    number = float(text)
    if not math.isfinite(number):
        return _MISSING
    return int(number) if number.is_integer() else number


def _read_boolean(text: str) -> Any:
    return _BOOLEANS.get(text.lower(), _MISSING)


def _read_null(text: str) -> Any:
    return None if text in _NULLS else _MISSING


def _read_object(text: str) -> Any:
    value = _read_json_like(text)
    return value if isinstance(value, dict) else _MISSING


def _read_array(text: str) -> Any:
    value = _read_json_like(text)
    return value if isinstance(value, list) else _MISSING


_READERS: dict[str, Callable[[str], Any]] = {
    "integer": _read_integer,
    "number": _read_number,
    "boolean": _read_boolean,
    "null": _read_null,
    "object": _read_object,
    "array": _read_array,
}


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # json.loads would accept NaN and Infinity


def _read_json_like(text: str) -> Any:
    """JSON, else a Python literal (models write `{'a': True}` too), else the text itself."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        pass
    try:
        literal = ast.literal_eval(text.strip())
        # Round-trip through JSON: tuples become lists, and anything JSON cannot hold is refused.
        return json.loads(json.dumps(literal, allow_nan=False))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return text
