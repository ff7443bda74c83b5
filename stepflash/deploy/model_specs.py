"""What the planner knows of each Step model: architecture, checkpoints and weight sizes.

Numbers come from FORMATS.md §5 (the model cards). The parameter split between dense parts
and routed experts is computed from the architecture, because expert parallelism shards
only the experts while data-parallel attention replicates the rest on every device.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from stepflash.deploy.hardware import GB


class Quantization(StrEnum):
    BF16 = "bf16"
    FP8 = "fp8"
    NVFP4 = "nvfp4"
    GGUF = "gguf"  # Q4_K_S, the published GGUF


class KvCacheType(StrEnum):
    BF16 = "bf16"  # the model's own dtype
    FP8 = "fp8"  # FP8 E4M3 on GPUs, q8_0 in llama.cpp


@dataclass(frozen=True)
class Architecture:
    """The text backbone shared by Step 3.5 and 3.7 Flash."""

    layers: int = 45
    mtp_layers: int = 3
    hidden: int = 4096
    dense_ffn: int = 11264
    dense_layers: int = 3
    routed_experts: int = 288
    experts_per_token: int = 8
    expert_width: int = 1280
    shared_experts: int = 1
    full_attention_layers: int = 12
    full_attention_heads: int = 64
    sliding_layers: int = 33
    sliding_heads: int = 96
    sliding_window: int = 512
    kv_heads: int = 8
    head_dim: int = 128
    vocab: int = 128_896
    max_context: int = 262_144

    @property
    def moe_layers(self) -> int:
        return self.layers - self.dense_layers

    def routed_expert_params(self) -> int:
        """Parameters that expert parallelism splits across devices."""
        per_expert = 3 * self.hidden * self.expert_width
        return self.moe_layers * self.routed_experts * per_expert

    def backbone_params(self) -> int:
        """Every text parameter, from the shapes (≈196.9B; the card says 196.8B)."""
        kv = 2 * self.hidden * self.kv_heads * self.head_dim

        def attention(heads: int) -> int:
            return 2 * self.hidden * heads * self.head_dim + kv

        attention_total = self.full_attention_layers * attention(
            self.full_attention_heads
        ) + self.sliding_layers * attention(self.sliding_heads)
        dense_ffn = self.dense_layers * 3 * self.hidden * self.dense_ffn
        shared = self.moe_layers * self.shared_experts * 3 * self.hidden * self.expert_width
        router = self.moe_layers * self.hidden * self.routed_experts
        embeddings = 2 * self.vocab * self.hidden
        return (
            attention_total + dense_ffn + shared + router + embeddings + self.routed_expert_params()
        )

    def kv_values_per_token(self, layers: int) -> int:
        """K and V values one token adds to `layers` attention layers."""
        return 2 * layers * self.kv_heads * self.head_dim


@dataclass(frozen=True, eq=False)  # compared by identity: one spec per model
class ModelSpec:
    """One servable model: its checkpoints and their published sizes."""

    name: str
    architecture: Architecture
    vision_params: int
    weights_gb: dict[Quantization, float]
    checkpoints: dict[Quantization, str]  # published ones only: StepFun has no NVFP4 3.5
    multimodal: bool = False

    def published(self, quantization: Quantization) -> bool:
        return quantization in self.checkpoints

    def weight_bytes(self, quantization: Quantization) -> int:
        return int(self.weights_gb[quantization] * GB)

    def expert_fraction(self) -> float:
        """Share of the weights in routed experts (what EP shards; the rest DP replicates)."""
        arch = self.architecture
        return arch.routed_expert_params() / (arch.backbone_params() + self.vision_params)


ARCHITECTURE = Architecture()

# Step 3.7 sizes are the card's; 3.5 has no vision encoder (1.8B fewer of ≈198.6B
# parameters), so its sizes are 3.7's scaled by the parameter ratio.
_STEP37_WEIGHTS_GB = {
    Quantization.BF16: 475.0,
    Quantization.FP8: 238.0,
    Quantization.NVFP4: 119.0,
    Quantization.GGUF: 111.5,
}
_RATIO_35 = 196.8 / (196.8 + 1.8)

MODELS: dict[str, ModelSpec] = {
    "step-3.7-flash": ModelSpec(
        name="step-3.7-flash",
        architecture=ARCHITECTURE,
        vision_params=1_800_000_000,
        weights_gb=_STEP37_WEIGHTS_GB,
        checkpoints={
            Quantization.BF16: "stepfun-ai/Step-3.7-Flash",
            Quantization.FP8: "stepfun-ai/Step-3.7-Flash-FP8",
            Quantization.NVFP4: "stepfun-ai/Step-3.7-Flash-NVFP4",
            Quantization.GGUF: "stepfun-ai/Step-3.7-Flash-GGUF",
        },
        multimodal=True,
    ),
    "step-3.5-flash": ModelSpec(
        name="step-3.5-flash",
        architecture=ARCHITECTURE,
        vision_params=0,
        weights_gb={q: round(gb * _RATIO_35, 1) for q, gb in _STEP37_WEIGHTS_GB.items()},
        checkpoints={
            Quantization.BF16: "stepfun-ai/Step-3.5-Flash",
            Quantization.FP8: "stepfun-ai/Step-3.5-Flash-FP8",
            Quantization.GGUF: "stepfun-ai/Step-3.5-Flash-GGUF-Q4_K_S",
        },
    ),
}


class UnknownModel(ValueError):
    """The planner has no spec for this model."""


def model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name.lower()]
    except KeyError:
        raise UnknownModel(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None
