"""The deployment planner: does a target fit, why (or why not), and the command that runs it.

A plan is arithmetic plus the engine's recipe. When the target cannot run, the planner
searches the nearest targets that can (one change, then two) so the answer is never just
"no".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from stepflash.deploy.engines import RECIPES, EngineRecipe, LaunchCommand
from stepflash.deploy.hardware import GB, Hardware, Vendor
from stepflash.deploy.memory import (
    KvCache,
    Layout,
    MemoryBudget,
    kv_cache,
    max_context,
    max_sequences,
    memory_budget,
)
from stepflash.deploy.model_specs import KvCacheType, ModelSpec, Quantization
from stepflash.deploy.target import EngineKind, Target

MIN_USEFUL_CONTEXT = 8192
HF_CACHE_MOUNT = "$HOME/.cache/huggingface:/root/.cache/huggingface"  # expanded by the shell
_QUANTIZATION_ORDER = (Quantization.BF16, Quantization.FP8, Quantization.NVFP4)
_SEARCH_LIMIT = 400


@dataclass(frozen=True)
class Alternative:
    """A nearby target that fits, and what changed to get there."""

    changes: list[str]
    plan: Plan


@dataclass(frozen=True)
class Plan:
    target: Target
    layout: Layout
    budget: MemoryBudget
    cache: KvCache
    problems: list[str]
    command: LaunchCommand
    backend: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    alternative: Alternative | None = None

    @property
    def fits(self) -> bool:
        return not self.problems

    @property
    def max_sequences(self) -> int:
        return max_sequences(self.budget, self.cache, self.target.context)

    @property
    def max_context(self) -> int:
        """The longest context at which the requested concurrency still fits."""
        return min(
            max_context(self.budget, self.cache, self.target.concurrency),
            self.target.model.architecture.max_context,
        )

    def to_json(self) -> dict[str, Any]:
        budget, cache = self.budget, self.cache
        return {
            "fits": self.fits,
            "problems": self.problems,
            "target": self.target.describe(),
            "layout": str(self.layout),
            "memory_gb": {
                "device": _gb(budget.device),
                "weights_per_device": _gb(budget.weights),
                "runtime_reserve_per_device": _gb(budget.runtime),
                "kv_cache_per_device": _gb(max(budget.kv_room, 0)),
                "kv_cache_total": _gb(budget.kv_room_total),
            },
            "kv_cache": {
                "full_attention_kib_per_token": round(cache.per_token_bytes / 1024, 2),
                "sliding_mib_per_sequence": round(cache.sliding_per_sequence / 2**20, 2),
                "gb_per_sequence_at_context": _gb(cache.per_sequence(self.target.context)),
            },
            "max_sequences_at_context": self.max_sequences,
            "max_context_at_concurrency": self.max_context,
            "command": self.command.argv,
            "environment": self.command.environment,
            "before": self.command.before,
            "docker": docker_run_line(self),
            "backend": self.backend,
            "notes": self.notes,
            "alternative": (
                {"changes": self.alternative.changes, "plan": self.alternative.plan.to_json()}
                if self.alternative
                else None
            ),
        }


def _gb(value: float) -> float:
    return round(value / GB, 2)


def _memory_problems(target: Target, budget: MemoryBudget, cache: KvCache) -> list[str]:
    if not budget.weights_fit:
        return [
            f"the {target.quantization.value} weights need {_gb(budget.weights)} GB per device, "
            f"but a {target.hardware.profile.name} has {_gb(budget.device)} GB and the engine "
            f"keeps {_gb(budget.runtime)} GB for activations and buffers"
        ]
    fitting = max_sequences(budget, cache, target.context)
    if fitting < target.concurrency:
        per_sequence = _gb(cache.per_sequence(target.context))
        return [
            f"each sequence of {target.context:,} tokens needs {per_sequence} GB of KV cache; "
            f"the {_gb(budget.kv_room_total)} GB left after the weights holds {fitting}, "
            f"not {target.concurrency}"
        ]
    return []


def _apple_wired_limit(target: Target, budget: MemoryBudget, cache: KvCache) -> list[str]:
    """macOS lets the GPU wire about 75% of memory; raise it when the plan needs more."""
    profile = target.hardware.profile
    if profile.vendor is not Vendor.APPLE:
        return []
    kv = cache.per_sequence(target.context) * target.concurrency
    needed = budget.weights + budget.runtime + kv
    if needed <= profile.memory_bytes * 0.75:
        return []
    return [f"sudo sysctl iogpu.wired_limit_mb={math.ceil(needed / 2**20 / 1024) * 1024}"]


def evaluate(target: Target) -> Plan:
    """Plan one target as given, without looking for alternatives."""
    recipe = RECIPES[target.engine]
    layout = recipe.layout(target)
    budget = memory_budget(
        target.model, target.quantization, target.hardware, layout, recipe.reserve(target)
    )
    cache = kv_cache(target.model, target.kv_cache, target.quantization, recipe.mtp_layers(target))
    refusals = recipe.refusals(target)
    problems = [r.reason for r in refusals] or _memory_problems(target, budget, cache)
    command = recipe.command(target)
    command = replace(command, before=_apple_wired_limit(target, budget, cache))
    base_url = f"http://{_url_host(target.host)}:{target.port}/v1"
    return Plan(
        target=target,
        layout=layout,
        budget=budget,
        cache=cache,
        problems=problems,
        command=command,
        backend=recipe.backend_entry(target, base_url),
        notes=_notes(target, recipe),
    )


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _notes(target: Target, recipe: EngineRecipe) -> list[str]:
    notes = []
    if not recipe.parses(target):
        notes.append(
            "stepflash renders the Step template and parses reasoning and tool calls itself "
            "(backend = completions)"
        )
    if target.engine is EngineKind.LLAMA_CPP and target.model.multimodal:
        notes.append("text only: images need the mmproj GGUF, which this plan does not load")
    if target.engine is EngineKind.TRANSFORMERS:
        notes.append("transformers serve is for verification: slow, no paged KV cache")
    return notes


def plan(target: Target) -> Plan:
    """Plan the target; when it does not fit, attach the nearest one that does."""
    result = evaluate(target)
    if result.fits:
        return result
    return replace(result, alternative=nearest_alternative(result))


def _apply(target: Target, change: dict[str, Any]) -> Target:
    changes = dict(change)
    if "count" in changes:
        count = changes.pop("count")
        changes["hardware"] = Hardware(target.hardware.profile, count)
    return target.with_changes(**changes)


def _describe(change: dict[str, Any]) -> str:
    return ", ".join(f"{key} {getattr(value, 'value', value)}" for key, value in change.items())


def _candidate_changes(current: Plan) -> list[dict[str, Any]]:
    """Single changes worth trying, nearest first: the refusals' own fixes, then memory."""
    target = current.target
    recipe = RECIPES[target.engine]
    changes: list[dict[str, Any]] = [fix for r in recipe.refusals(target) for fix in r.fixes]
    if target.kv_cache is KvCacheType.BF16:
        changes.append({"kv_cache": KvCacheType.FP8})
    if target.quantization in _QUANTIZATION_ORDER:
        index = _QUANTIZATION_ORDER.index(target.quantization)
        changes += [{"quantization": q} for q in _QUANTIZATION_ORDER[index + 1 :]]
    if current.budget.weights_fit:
        longest = current.max_context
        if MIN_USEFUL_CONTEXT <= longest < target.context:
            changes.append({"context": longest // 1024 * 1024})
        if 1 <= current.max_sequences < target.concurrency:
            changes.append({"concurrency": current.max_sequences})
    count = target.hardware.count
    changes += [
        {"count": more} for more in (2, 4, 8) if count < more <= target.hardware.profile.max_count
    ]
    return changes


def nearest_alternative(start: Plan) -> Alternative | None:
    """Breadth-first over changes (depth two at most): the first target that fits."""
    frontier: list[tuple[list[dict[str, Any]], Plan]] = [([], start)]
    seen = {start.target}
    tried = 0
    for _depth in range(2):
        next_frontier = []
        for path, node in frontier:
            for change in _candidate_changes(node):
                candidate = _apply(node.target, change)
                if candidate in seen:
                    continue
                seen.add(candidate)
                tried += 1
                if tried > _SEARCH_LIMIT:
                    return None
                result = evaluate(candidate)
                if result.fits:
                    return Alternative([_describe(c) for c in [*path, change]], result)
                next_frontier.append(([*path, change], result))
        frontier = next_frontier
    return None


def docker_run_line(plan: Plan, name: str | None = None) -> list[str] | None:
    """The `docker run` argv for the plan (engine bound to 0.0.0.0 inside the container)."""
    command = plan.command
    if command.image is None:
        return None
    target = plan.target
    inside = RECIPES[target.engine].command(target.with_changes(host="0.0.0.0"))
    argv = ["docker", "run", "--rm"]
    if name:
        argv += ["--name", name]
    argv += _device_flags(target)
    argv += ["--shm-size", "32g", "--ipc", "host"]
    argv += ["-p", f"127.0.0.1:{target.port}:{target.port}"]
    argv += ["-v", HF_CACHE_MOUNT]
    for key, value in inside.environment.items():
        argv += ["-e", f"{key}={value}"]
    if inside.docker_entrypoint:
        return [*argv, "--entrypoint", inside.argv[0], command.image, *inside.argv[1:]]
    return [*argv, command.image, *inside.argv[1:]]


def _device_flags(target: Target) -> list[str]:
    profile = target.hardware.profile
    if profile.vendor is Vendor.AMD and profile.unified:
        return ["--device", "/dev/dri"]  # Vulkan on the integrated GPU
    if profile.vendor is Vendor.AMD:
        flags = ["--device", "/dev/kfd", "--device", "/dev/dri", "--group-add", "video"]
        return [*flags, "--security-opt", "seccomp=unconfined"]
    return ["--gpus", "all"]


def choose_target(
    model: ModelSpec,
    hardware: Hardware,
    *,
    engine: EngineKind | None = None,
    quantization: Quantization | None = None,
    kv_cache: KvCacheType | None = None,
    mtp: bool | None = None,
    **fixed: Any,
) -> Target:
    """Fill in what the user left to the planner.

    The engine defaults to SGLang on GPUs and llama.cpp on unified-memory machines; the
    quantization to the most precise one that fits; the KV cache to FP8 with NVFP4 weights
    (as the recipes pair them); MTP to on wherever the engine's recipe has it.
    """
    if engine is None:
        discrete = hardware.profile.discrete_gpu and not hardware.profile.unified
        engine = EngineKind.SGLANG if discrete else EngineKind.LLAMA_CPP

    def build(quant: Quantization) -> Target:
        kv = kv_cache or (KvCacheType.FP8 if quant is Quantization.NVFP4 else KvCacheType.BF16)
        draft = mtp
        if draft is None:
            nvfp4_sglang = engine is EngineKind.SGLANG and quant is Quantization.NVFP4
            gpu_engine = engine in (EngineKind.SGLANG, EngineKind.VLLM)
            draft = gpu_engine and not nvfp4_sglang
        return Target(model, hardware, engine, quant, kv, mtp=draft, **fixed)

    if quantization is not None:
        return build(quantization)
    candidates = RECIPES[engine].quantizations
    for quant in candidates:
        target = build(quant)
        if evaluate(target).fits:
            return target
    return build(candidates[0])
