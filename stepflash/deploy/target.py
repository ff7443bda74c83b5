"""What the user asks the planner for: one model on one machine with one engine."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from stepflash.deploy.hardware import Hardware
from stepflash.deploy.model_specs import KvCacheType, ModelSpec, Quantization


class EngineKind(StrEnum):
    SGLANG = "sglang"
    VLLM = "vllm"
    LLAMA_CPP = "llama.cpp"
    TRANSFORMERS = "transformers"


class ParallelChoice(StrEnum):
    AUTO = "auto"
    TENSOR = "tp"  # tensor parallel (with expert parallel where the recipe uses it)
    DATA = "dp"  # data-parallel attention + expert parallel


@dataclass(frozen=True)
class Target:
    """The planner's inputs, all decided (no "auto" left except `parallel`)."""

    model: ModelSpec
    hardware: Hardware
    engine: EngineKind
    quantization: Quantization
    kv_cache: KvCacheType
    context: int
    concurrency: int
    mtp: bool
    parsers: bool
    parallel: ParallelChoice = ParallelChoice.AUTO
    host: str = "127.0.0.1"
    port: int = 30000
    model_path: str | None = None  # a local path or repo id instead of the published one

    def with_changes(self, **changes: Any) -> Target:
        return replace(self, **changes)

    @property
    def weights_source(self) -> str:
        return self.model_path or self.model.checkpoints.get(self.quantization, "MODEL_PATH")

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model.name,
            "hardware": self.hardware.label,
            "engine": str(self.engine),
            "quantization": str(self.quantization),
            "kv_cache": str(self.kv_cache),
            "context": self.context,
            "concurrency": self.concurrency,
            "mtp": self.mtp,
            "parsers": self.parsers,
            "parallel": str(self.parallel),
        }
