"""One recipe per serving engine: what it supports, how it lays out the model, its command.

The flags follow the vendors' published recipes (FORMATS.md §5, the SGLang cookbook, the
vLLM recipes, StepFun's model cards); where those disagree, the rule chosen is written next
to the flag. Each recipe also says how stepflash talks to the engine it launches.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from stepflash.deploy.hardware import Vendor
from stepflash.deploy.memory import Layout, RuntimeReserve
from stepflash.deploy.model_specs import KvCacheType, Quantization
from stepflash.deploy.target import EngineKind, ParallelChoice, Target

REASONING_PARSER = "step3p5"
TOOL_PARSER = "step3p5"
STEP_3_5 = "step-3.5-flash"


@dataclass(frozen=True)
class Refusal:
    """Why a target cannot run, and the changes that would avoid it (nearest first)."""

    reason: str
    fixes: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class LaunchCommand:
    """Everything needed to start the engine natively or in Docker."""

    argv: list[str]
    environment: dict[str, str] = field(default_factory=dict)
    before: list[str] = field(default_factory=list)  # e.g. raising macOS's GPU memory limit
    image: str | None = None
    docker_entrypoint: bool = True  # the image needs argv[0] as its entrypoint


def _power_of_two_up_to_8(count: int) -> bool:
    return count in (1, 2, 4, 8)


class EngineRecipe(ABC):
    """How one engine serves Step Flash."""

    kind: ClassVar[EngineKind]
    executable: ClassVar[str]
    install_hint: ClassVar[str]
    health_path: ClassVar[str] = "/health"
    quantizations: ClassVar[tuple[Quantization, ...]]

    def refusals(self, target: Target) -> list[Refusal]:
        """Every reason the target cannot run on this engine (empty: it can, memory aside)."""
        return [*self._common_refusals(target), *self._engine_refusals(target)]

    def _common_refusals(self, target: Target) -> list[Refusal]:
        profile, quant = target.hardware.profile, target.quantization
        found: list[Refusal] = []
        if target.hardware.count > profile.max_count:
            found.append(
                Refusal(
                    f"{profile.name} plans at most {profile.max_count} device(s) per node; "
                    "run several engines and list them all as replicas instead",
                    ({"count": profile.max_count},),
                )
            )
        if quant not in self.quantizations:
            supported = ", ".join(q.value for q in self.quantizations)
            found.append(
                Refusal(
                    f"{self.kind} does not serve {quant.value} checkpoints (it serves {supported})",
                    tuple({"quantization": q} for q in self.quantizations),
                )
            )
        elif not target.model.published(quant) and target.model_path is None:
            found.append(
                Refusal(
                    f"StepFun publishes no {quant.value} checkpoint of {target.model.name} "
                    "(pass --model-path to use your own)",
                    ({"quantization": Quantization.FP8}, {"quantization": Quantization.BF16}),
                )
            )
        if quant is Quantization.FP8 and not profile.fp8:
            found.append(
                Refusal(
                    f"{profile.name} has no FP8 support",
                    ({"quantization": Quantization.BF16}, {"quantization": Quantization.GGUF}),
                )
            )
        if quant is Quantization.NVFP4 and not profile.nvfp4:
            why = profile.note or f"{profile.architecture} is not Blackwell"
            found.append(
                Refusal(
                    f"NVFP4 needs datacenter Blackwell (B200, B300, GB200, GB300): {why}",
                    ({"quantization": Quantization.FP8},),
                )
            )
        fp8_cache = target.kv_cache is KvCacheType.FP8 and quant is not Quantization.GGUF
        if fp8_cache and not profile.fp8:
            found.append(
                Refusal(
                    f"{profile.name} cannot hold an FP8 KV cache",
                    ({"kv_cache": KvCacheType.BF16},),
                )
            )
        return found

    @abstractmethod
    def _engine_refusals(self, target: Target) -> list[Refusal]: ...

    @abstractmethod
    def layout(self, target: Target) -> Layout: ...

    @abstractmethod
    def reserve(self, target: Target) -> RuntimeReserve: ...

    def mtp_layers(self, target: Target) -> int:
        """Draft layers the engine runs with MTP on (their KV cache counts too)."""
        return target.model.architecture.mtp_layers if target.mtp else 0

    @abstractmethod
    def command(self, target: Target) -> LaunchCommand: ...

    def backend_entry(self, target: Target, base_url: str) -> dict[str, Any]:
        """The `[[models]]` entry of stepflash.toml that serves this engine."""
        entry: dict[str, Any] = {
            "name": target.model.name,
            "backend": "openai" if self.parses(target) else "completions",
            "replicas": [base_url],
            "context_length": target.context,
        }
        if self.parses(target):
            entry["effort"] = self.effort_passing
            if not target.model.multimodal:
                entry["media"] = []
        return entry

    effort_passing: ClassVar[str] = "both"

    def parses(self, target: Target) -> bool:
        """The engine's own step3p5 parsers are on (else stepflash parses raw completions)."""
        return target.parsers


class _GpuEngine(EngineRecipe):
    """What SGLang and vLLM share: CUDA or ROCm GPUs, TP over at most 8 KV heads."""

    def _engine_refusals(self, target: Target) -> list[Refusal]:
        profile, count = target.hardware.profile, target.hardware.count
        found: list[Refusal] = []
        if not profile.discrete_gpu:
            found.append(
                Refusal(
                    f"{self.kind} needs CUDA or ROCm GPUs; {profile.name} runs llama.cpp",
                    ({"engine": EngineKind.LLAMA_CPP, "quantization": Quantization.GGUF},),
                )
            )
        if not _power_of_two_up_to_8(count):
            nearest = max(c for c in (1, 2, 4, 8) if c <= max(count, 1))
            found.append(
                Refusal(
                    f"{count} GPUs cannot split 8 KV heads evenly; use 1, 2, 4 or 8",
                    ({"count": nearest},),
                )
            )
        return found + self._recipe_refusals(target)

    @abstractmethod
    def _recipe_refusals(self, target: Target) -> list[Refusal]: ...


class SGLangRecipe(_GpuEngine):
    kind = EngineKind.SGLANG
    executable = "sglang"
    install_hint = 'pip install "sglang[all]"  (or use the Docker image shown)'
    quantizations = (Quantization.BF16, Quantization.FP8, Quantization.NVFP4)
    effort_passing = "chat_template_kwargs"  # SGLang reads effort from the template kwargs
    memory_fraction = 0.88

    def _recipe_refusals(self, target: Target) -> list[Refusal]:
        found: list[Refusal] = []
        if target.parallel is ParallelChoice.DATA:
            found.append(
                Refusal(
                    "the SGLang recipes use tensor parallelism; DP attention is not validated "
                    "for Step Flash (vLLM's recipe has a DP + EP variant)",
                    ({"parallel": ParallelChoice.TENSOR}, {"engine": EngineKind.VLLM}),
                )
            )
        if target.mtp and target.quantization is Quantization.NVFP4:
            found.append(
                Refusal(
                    "SGLang's published NVFP4 recipe runs without MTP",
                    ({"mtp": False}, {"engine": EngineKind.VLLM}),
                )
            )
        if target.quantization is Quantization.NVFP4 and target.kv_cache is KvCacheType.BF16:
            found.append(
                Refusal(
                    "the NVFP4 recipe pairs the weights with an FP8 KV cache",
                    ({"kv_cache": KvCacheType.FP8},),
                )
            )
        return found

    def layout(self, target: Target) -> Layout:
        return Layout.TENSOR

    def reserve(self, target: Target) -> RuntimeReserve:
        return RuntimeReserve(self.memory_fraction, 0.0)  # activations live outside the fraction

    def command(self, target: Target) -> LaunchCommand:
        count, quant = target.hardware.count, target.quantization
        amd = target.hardware.profile.vendor is Vendor.AMD
        argv = ["sglang", "serve", "--model-path", target.weights_source]
        argv += ["--served-model-name", target.model.name, "--host", target.host]
        argv += ["--port", str(target.port), "--tp", str(count)]
        # The cookbook's generator adds expert parallelism for FP8 and on AMD (where the
        # 320-wide TP shard of an expert breaks AITER's GEMM); the NVFP4 recipe has it too.
        if count > 1 and (quant is not Quantization.BF16 or amd):
            argv += ["--ep", str(count)]
        if quant is Quantization.NVFP4:
            argv += ["--quantization", "modelopt_fp4", "--moe-runner-backend", "flashinfer_trtllm"]
            argv += ["--attention-backend", "trtllm_mha"]
        if target.kv_cache is KvCacheType.FP8:
            argv += ["--kv-cache-dtype", "fp8_e4m3"]
        argv += ["--context-length", str(target.context)]
        argv += ["--mem-fraction-static", f"{self.memory_fraction:g}"]
        if target.parsers:
            argv += ["--reasoning-parser", REASONING_PARSER, "--tool-call-parser", TOOL_PARSER]
        if target.model.multimodal:
            argv += ["--enable-multimodal"]
        if target.mtp:
            argv += ["--speculative-algorithm", "EAGLE", "--speculative-num-steps", "3"]
            argv += ["--speculative-eagle-topk", "1", "--speculative-num-draft-tokens", "4"]
            argv += ["--enable-multi-layer-eagle"]
        argv += ["--enable-cache-report", "--enable-metrics", "--trust-remote-code"]
        return LaunchCommand(argv, image=self._docker_image(target))

    def _docker_image(self, target: Target) -> str:
        profile = target.hardware.profile
        if profile.vendor is Vendor.AMD:
            suffix = "mi35x" if profile.architecture == "cdna4" else "mi30x"
            return f"lmsysorg/sglang:v0.5.9-rocm700-{suffix}"
        if target.model.multimodal:
            return "lmsysorg/sglang:dev-step-3.7-flash"
        return "lmsysorg/sglang:latest"


class VllmRecipe(_GpuEngine):
    kind = EngineKind.VLLM
    executable = "vllm"
    install_hint = "pip install -U vllm --extra-index-url https://wheels.vllm.ai/nightly"
    quantizations = (Quantization.BF16, Quantization.FP8, Quantization.NVFP4)
    memory_utilization = 0.9
    activation_gb = 2.0  # profiled by vLLM inside its share: activations and CUDA graphs

    @staticmethod
    def _fp8_tp_limited(target: Target) -> bool:
        """FP8 Step 3.5 on NVIDIA: 128-wide FP8 blocks need 1280/TP divisible by 128."""
        return (
            target.model.name == STEP_3_5
            and target.quantization is Quantization.FP8
            and target.hardware.profile.vendor is Vendor.NVIDIA
            and target.hardware.count > 2
        )

    def _recipe_refusals(self, target: Target) -> list[Refusal]:
        if target.parallel is ParallelChoice.TENSOR and self._fp8_tp_limited(target):
            count = target.hardware.count
            return [
                Refusal(
                    f"FP8 Step 3.5 cannot use TP {count} on vLLM: its FP8 weights come in "
                    f"128-wide blocks and TP {count} cuts the 1280-wide experts into "
                    f"{1280 // count}",
                    ({"parallel": ParallelChoice.DATA},),
                )
            ]
        return []

    def layout(self, target: Target) -> Layout:
        if target.parallel is ParallelChoice.DATA:
            return Layout.DATA
        if target.parallel is ParallelChoice.AUTO and self._fp8_tp_limited(target):
            return Layout.DATA
        return Layout.TENSOR

    def reserve(self, target: Target) -> RuntimeReserve:
        return RuntimeReserve(self.memory_utilization, self.activation_gb)

    def mtp_layers(self, target: Target) -> int:
        if target.mtp and target.model.name == STEP_3_5:
            return 1  # vLLM runs one MTP layer of 3.5 (num_nextn_predict_layers 1)
        return super().mtp_layers(target)

    def command(self, target: Target) -> LaunchCommand:
        count, quant = target.hardware.count, target.quantization
        profile = target.hardware.profile
        argv = ["vllm", "serve", target.weights_source, "--served-model-name", target.model.name]
        argv += ["--host", target.host, "--port", str(target.port)]
        if self.layout(target) is Layout.DATA:
            argv += ["--data-parallel-size", str(count)]
        else:
            argv += ["--tensor-parallel-size", str(count)]
        if count > 1:
            argv += ["--enable-expert-parallel"]
        # The SWA + global attention mix is incompatible with cascade attention.
        argv += ["--disable-cascade-attn"]
        if quant is Quantization.NVFP4:
            argv += ["--quantization", "modelopt"]
        if target.kv_cache is KvCacheType.FP8:
            argv += ["--kv-cache-dtype", "fp8"]
        argv += ["--max-model-len", str(target.context)]
        argv += ["--gpu-memory-utilization", f"{self.memory_utilization:g}"]
        if target.parsers:
            argv += ["--reasoning-parser", REASONING_PARSER, "--enable-auto-tool-choice"]
            argv += ["--tool-call-parser", TOOL_PARSER]
        if target.mtp:
            argv += self._mtp_flags(target)
        argv += ["--enable-prompt-tokens-details", "--trust-remote-code"]
        environment: dict[str, str] = {}
        if profile.vendor is Vendor.AMD:
            # AITER's MoE does not support Step's SWIGLUSTEP activation.
            environment = {
                "VLLM_USE_TRITON_FLASH_ATTN": "0",
                "VLLM_ROCM_USE_AITER": "1",
                "VLLM_ROCM_USE_AITER_MOE": "0",
            }
        elif quant is Quantization.FP8 and profile.architecture.startswith("blackwell"):
            environment = {"VLLM_USE_FLASHINFER_MOE_FP8": "0"}  # "routing_logits must be bf16"
        return LaunchCommand(argv, environment, image=self._docker_image(target))

    @staticmethod
    def _mtp_flags(target: Target) -> list[str]:
        if target.model.name == STEP_3_5:
            config = {"method": "step3p5_mtp", "num_speculative_tokens": 1}
            overrides = json.dumps({"num_nextn_predict_layers": 1})
            return ["--hf-overrides", overrides, "--speculative-config", json.dumps(config)]
        return ["--speculative-config", json.dumps({"method": "mtp", "num_speculative_tokens": 3})]

    def _docker_image(self, target: Target) -> str:
        if target.hardware.profile.vendor is Vendor.AMD:
            return "vllm/vllm-openai-rocm:v0.17.1"
        tag = "stepfun37" if target.model.multimodal else "nightly"
        return f"vllm/vllm-openai:{tag}"


class LlamaCppRecipe(EngineRecipe):
    kind = EngineKind.LLAMA_CPP
    executable = "llama-server"
    install_hint = (
        "build llama.cpp (https://github.com/ggml-org/llama.cpp) with Metal, CUDA or Vulkan, "
        "or `brew install llama.cpp`, and put llama-server on PATH"
    )
    quantizations = (Quantization.GGUF,)
    overhead_gb = 7.0  # StepFun: about 7 GB besides the 111.5 GB of Q4_K_S weights
    gguf_quant = "Q4_K_S"

    def _engine_refusals(self, target: Target) -> list[Refusal]:
        found: list[Refusal] = []
        if target.mtp:
            found.append(Refusal("llama-server runs Step Flash without MTP", ({"mtp": False},)))
        if target.parallel is not ParallelChoice.AUTO:
            found.append(
                Refusal(
                    "llama.cpp splits layers across devices; --parallel does not apply",
                    ({"parallel": ParallelChoice.AUTO},),
                )
            )
        return found

    def layout(self, target: Target) -> Layout:
        return Layout.SINGLE if target.hardware.count == 1 else Layout.LAYERS

    def reserve(self, target: Target) -> RuntimeReserve:
        return RuntimeReserve(1.0, self.overhead_gb)

    def parses(self, target: Target) -> bool:
        return False  # stepflash renders the Step template and parses the raw completions

    def command(self, target: Target) -> LaunchCommand:
        profile = target.hardware.profile
        source = (
            ["-m", target.model_path]
            if target.model_path
            else ["-hf", f"{target.model.checkpoints[Quantization.GGUF]}:{self.gguf_quant}"]
        )
        argv = ["llama-server", *source, "--alias", target.model.name]
        argv += ["--host", target.host, "--port", str(target.port)]
        # llama-server's -c is the total over its -np slots.
        argv += ["-c", str(target.context * target.concurrency), "-np", str(target.concurrency)]
        argv += ["-ngl", "999", "-fa", "on", "-b", "2048", "-ub", "2048"]
        if target.kv_cache is KvCacheType.FP8:
            argv += ["-ctk", "q8_0", "-ctv", "q8_0"]
        if target.hardware.count > 1:
            argv += ["--split-mode", "layer"]
        argv += ["--metrics"]
        environment: dict[str, str] = {}
        if profile.unified and profile.vendor is Vendor.NVIDIA:
            environment["GGML_CUDA_ENABLE_UNIFIED_MEMORY"] = "1"  # DGX Spark
        image = None
        if profile.vendor is Vendor.NVIDIA:
            image = "ghcr.io/ggml-org/llama.cpp:server-cuda"
        elif profile.vendor is Vendor.AMD:
            image = "ghcr.io/ggml-org/llama.cpp:server-vulkan"
        return LaunchCommand(argv, environment, image=image, docker_entrypoint=False)


class TransformersRecipe(EngineRecipe):
    kind = EngineKind.TRANSFORMERS
    executable = "transformers"
    install_hint = 'pip install "transformers[serving]>=5"'
    quantizations = (Quantization.BF16,)

    def _engine_refusals(self, target: Target) -> list[Refusal]:
        found: list[Refusal] = []
        profile = target.hardware.profile
        if not profile.discrete_gpu:
            found.append(
                Refusal(
                    f"transformers is not planned on {profile.name}; use llama.cpp",
                    ({"engine": EngineKind.LLAMA_CPP, "quantization": Quantization.GGUF},),
                )
            )
        if target.parsers:
            found.append(
                Refusal(
                    "transformers serve has no step3p5 reasoning or tool parsers (StepFun calls "
                    "it debug and verification only); serve with sglang or vllm for agents",
                    ({"engine": EngineKind.VLLM}, {"engine": EngineKind.SGLANG}),
                )
            )
        if target.mtp:
            found.append(Refusal("transformers runs without MTP", ({"mtp": False},)))
        if target.kv_cache is KvCacheType.FP8:
            found.append(
                Refusal("transformers keeps a BF16 KV cache", ({"kv_cache": KvCacheType.BF16},))
            )
        if target.parallel is not ParallelChoice.AUTO:
            found.append(
                Refusal(
                    "transformers places layers with device_map=auto; --parallel does not apply",
                    ({"parallel": ParallelChoice.AUTO},),
                )
            )
        return found

    def layout(self, target: Target) -> Layout:
        return Layout.SINGLE if target.hardware.count == 1 else Layout.LAYERS

    def reserve(self, target: Target) -> RuntimeReserve:
        return RuntimeReserve(0.9, 4.0)

    def command(self, target: Target) -> LaunchCommand:
        argv = ["transformers", "serve", target.weights_source, "--host", target.host]
        argv += ["--port", str(target.port), "--trust-remote-code", "--dtype", "bfloat16"]
        argv += ["--continuous-batching"]
        return LaunchCommand(argv)


RECIPES: dict[EngineKind, EngineRecipe] = {
    recipe.kind: recipe
    for recipe in (SGLangRecipe(), VllmRecipe(), LlamaCppRecipe(), TransformersRecipe())
}
