"""What both client protocols share on the wire: strictness, tool names, sampling defaults."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from stepflash.core.request import Sampling

TOOL_NAME_PATTERN = r"^[a-zA-Z_][a-zA-Z0-9_-]{0,63}$"
DEFAULT_TEMPERATURE = 0.5  # StepFun's defaults, whichever protocol the caller speaks
DEFAULT_TOP_P = 0.9


class Wire(BaseModel):
    """Unknown fields are ignored (clients send many); known ones must have the right type."""

    model_config = ConfigDict(extra="ignore", strict=True)


def sampling(temperature: float | None, top_p: float | None, **rest: Any) -> Sampling:
    """The caller's sampling, with StepFun's defaults where it set none."""
    return Sampling(
        temperature=DEFAULT_TEMPERATURE if temperature is None else temperature,
        top_p=DEFAULT_TOP_P if top_p is None else top_p,
        **rest,
    )
