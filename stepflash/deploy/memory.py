"""Memory arithmetic: weights per device, KV cache per token and per sequence, what is left.

KV cache (FORMATS.md §5): full-attention layers grow with the context (48 KiB per token in
BF16), sliding-window layers are bounded by the window (≈66 MiB per sequence in BF16); an FP8
cache halves both. The MTP draft layers are counted as full-attention layers, which is the
conservative reading (their attention type is not published).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from stepflash.deploy.hardware import Hardware
from stepflash.deploy.model_specs import KvCacheType, ModelSpec, Quantization


class Layout(StrEnum):
    """How weights and sequences are spread over the devices."""

    SINGLE = "single"  # one device (or one unified memory)
    TENSOR = "tp+ep"  # tensor parallel attention, expert parallel MoE: everything sharded
    DATA = "dp+ep"  # data parallel attention (dense parts replicated), experts sharded
    LAYERS = "layers"  # layers split over devices (transformers' device_map="auto")


@dataclass(frozen=True)
class RuntimeReserve:
    """What an engine keeps besides weights and KV cache: activations, graphs, buffers."""

    memory_fraction: float  # share of the device the engine may take
    activation_gb: float  # taken out of that share for activations and graphs

    def reserve_bytes(self, device_bytes: int) -> int:
        return int(device_bytes * (1 - self.memory_fraction) + self.activation_gb * 1e9)


def kv_bytes_per_element(kv_cache: KvCacheType, quantization: Quantization) -> float:
    """Bytes per cached K or V value (llama.cpp's q8_0 stores 32 values in 34 bytes)."""
    if kv_cache is KvCacheType.BF16:
        return 2.0
    return 34 / 32 if quantization is Quantization.GGUF else 1.0


@dataclass(frozen=True)
class KvCache:
    """KV cache sizes for one model, cache type and MTP setting."""

    per_token_bytes: float  # full-attention (and MTP) layers: grows with the context
    sliding_bytes_per_token: float  # sliding layers: only the last `window` tokens
    window: int

    def per_sequence(self, context: int) -> float:
        """Bytes one sequence of `context` tokens holds."""
        return context * self.per_token_bytes + min(context, self.window) * (
            self.sliding_bytes_per_token
        )

    @property
    def sliding_per_sequence(self) -> float:
        return self.window * self.sliding_bytes_per_token


def kv_cache(
    spec: ModelSpec, kv_type: KvCacheType, quantization: Quantization, mtp_layers: int
) -> KvCache:
    """The cache of one configuration; `mtp_layers` are the draft layers the engine runs."""
    arch = spec.architecture
    element = kv_bytes_per_element(kv_type, quantization)
    full_layers = arch.full_attention_layers + mtp_layers
    return KvCache(
        per_token_bytes=arch.kv_values_per_token(full_layers) * element,
        sliding_bytes_per_token=arch.kv_values_per_token(arch.sliding_layers) * element,
        window=arch.sliding_window,
    )


@dataclass(frozen=True)
class MemoryBudget:
    """One device's memory, split; all figures in bytes."""

    device: int  # usable memory of one device (after the OS reserve on unified machines)
    weights: int  # weights held by one device
    runtime: int  # activations, graphs, communication buffers
    kv_room: int  # what is left for KV cache on one device (negative: weights do not fit)
    devices: int

    @property
    def weights_fit(self) -> bool:
        return self.kv_room > 0

    @property
    def kv_room_total(self) -> int:
        return max(self.kv_room, 0) * self.devices


def weights_per_device(
    spec: ModelSpec, quantization: Quantization, layout: Layout, devices: int
) -> int:
    """Dense parts are replicated under data-parallel attention; experts are always sharded."""
    total = spec.weight_bytes(quantization)
    experts = total * spec.expert_fraction()
    dense = total - experts
    dense_share = dense if layout is Layout.DATA else dense / devices
    return int(dense_share + experts / devices)


def memory_budget(
    spec: ModelSpec,
    quantization: Quantization,
    hardware: Hardware,
    layout: Layout,
    reserve: RuntimeReserve,
) -> MemoryBudget:
    device = hardware.profile.usable_bytes
    weights = weights_per_device(spec, quantization, layout, hardware.count)
    runtime = reserve.reserve_bytes(device)
    return MemoryBudget(device, weights, runtime, device - weights - runtime, hardware.count)


def max_sequences(budget: MemoryBudget, cache: KvCache, context: int) -> int:
    """Sequences of `context` tokens that fit in the KV cache of all devices together."""
    return int(budget.kv_room_total // cache.per_sequence(context))


def max_context(budget: MemoryBudget, cache: KvCache, sequences: int) -> int:
    """The longest context at which `sequences` sequences still fit (0 if none)."""
    room = budget.kv_room_total / max(sequences, 1) - cache.sliding_per_sequence
    return max(int(room // cache.per_token_bytes), 0)
