"""The deployment planner: memory arithmetic, published recipes, refusals and alternatives."""

from __future__ import annotations

import json
import shlex

import pytest

from stepflash.deploy.hardware import UnknownHardware, parse_hardware
from stepflash.deploy.model_specs import MODELS, KvCacheType, Quantization, model_spec
from stepflash.deploy.planner import Plan, choose_target, plan
from stepflash.deploy.target import EngineKind, ParallelChoice

KIB, MIB, GB = 1024, 2**20, 1e9


def make_plan(model: str, hardware: str, memory_gb: float | None = None, **options) -> Plan:
    options.setdefault("context", 262_144)
    options.setdefault("concurrency", 1)
    options.setdefault("parsers", True)
    target = choose_target(model_spec(model), parse_hardware(hardware, memory_gb), **options)
    return plan(target)


def flags(argv: list[str]) -> dict[str, str | None]:
    """`--flag value` / `--switch` pairs; JSON values are normalised for comparison."""
    pairs: dict[str, str | None] = {}
    for index, word in enumerate(argv):
        if not word.startswith("-"):
            continue
        following = argv[index + 1] if index + 1 < len(argv) else None
        value = None if following is None or following.startswith("-") else following
        if value and value.startswith("{"):
            value = json.dumps(json.loads(value), sort_keys=True)
        pairs[word] = value
    return pairs


def assert_reproduces(argv: list[str], published: str) -> None:
    words = shlex.split(published)
    ours = flags(argv)
    for flag, value in flags(words).items():
        assert flag in ours, f"{flag} missing from {shlex.join(argv)}"
        assert ours[flag] == value, f"{flag}: ours {ours[flag]!r}, published {value!r}"
    positional = [
        w
        for i, w in enumerate(words)
        if not w.startswith("-") and (i == 0 or not words[i - 1].startswith("-"))
    ]
    for word in positional:
        assert word in argv, f"{word} missing from {shlex.join(argv)}"


EAGLE = (
    "--speculative-algorithm EAGLE --speculative-num-steps 3 --speculative-eagle-topk 1 "
    "--speculative-num-draft-tokens 4 --enable-multi-layer-eagle"
)

# (what, model, hardware, options, published command)
RECIPES = [
    (
        "SGLang cookbook, Step 3.5 BF16 on 4xH200 (command generator, all options on)",
        "step-3.5-flash",
        "4xH200",
        {"engine": EngineKind.SGLANG},
        "sglang serve --model-path stepfun-ai/Step-3.5-Flash --tp 4 --trust-remote-code "
        f"--reasoning-parser step3p5 --tool-call-parser step3p5 {EAGLE}",
    ),
    (
        "SGLang cookbook, Step 3.5 FP8 on 4xH200 (the generator adds EP for FP8)",
        "step-3.5-flash",
        "4xH200",
        {"engine": EngineKind.SGLANG, "quantization": Quantization.FP8},
        "sglang serve --model-path stepfun-ai/Step-3.5-Flash-FP8 --tp 4 --ep 4 --trust-remote-code",
    ),
    (
        "SGLang cookbook, Step 3.5 on 4xMI300X (EP 4 required on AMD)",
        "step-3.5-flash",
        "4xMI300X",
        {"engine": EngineKind.SGLANG},
        "sglang serve --model-path stepfun-ai/Step-3.5-Flash --tp 4 --ep 4 "
        "--reasoning-parser step3p5 --tool-call-parser step3p5",
    ),
    (
        "StepFun model card, Step 3.7 BF16 with SGLang (8 GPUs)",
        "step-3.7-flash",
        "8xH200",
        {"engine": EngineKind.SGLANG},
        "sglang serve --model-path stepfun-ai/Step-3.7-Flash --tp 8 --reasoning-parser step3p5 "
        f"--tool-call-parser step3p5 --enable-multimodal {EAGLE} --trust-remote-code",
    ),
    (
        "StepFun model card, Step 3.7 NVFP4 with SGLang on 4xB200",
        "step-3.7-flash",
        "4xB200",
        {"engine": EngineKind.SGLANG, "quantization": Quantization.NVFP4},
        "sglang serve --model-path stepfun-ai/Step-3.7-Flash-NVFP4 --tp 4 --ep 4 "
        "--moe-runner-backend flashinfer_trtllm --kv-cache-dtype fp8_e4m3 "
        "--quantization modelopt_fp4 --trust-remote-code --reasoning-parser step3p5 "
        "--tool-call-parser step3p5 --attention-backend trtllm_mha",
    ),
    (
        "vLLM recipe, Step 3.5 BF16 on 4xH200, tensor parallel, with MTP",
        "step-3.5-flash",
        "4xH200",
        {"engine": EngineKind.VLLM},
        "vllm serve stepfun-ai/Step-3.5-Flash --tensor-parallel-size 4 --reasoning-parser step3p5 "
        "--tool-call-parser step3p5 --enable-auto-tool-choice --trust-remote-code "
        """--hf-overrides '{"num_nextn_predict_layers": 1}' """
        """--speculative-config '{"method": "step3p5_mtp", "num_speculative_tokens": 1}'""",
    ),
    (
        "vLLM recipe, Step 3.5 FP8 on 4xH200: DP 4 + EP, since TP 4 is impossible",
        "step-3.5-flash",
        "4xH200",
        {"engine": EngineKind.VLLM, "quantization": Quantization.FP8},
        "vllm serve stepfun-ai/Step-3.5-Flash-FP8 --data-parallel-size 4 --enable-expert-parallel "
        "--reasoning-parser step3p5 --tool-call-parser step3p5 --enable-auto-tool-choice "
        "--trust-remote-code",
    ),
    (
        "vLLM recipe, Step 3.7 FP8 on 8xH200 with MTP 3",
        "step-3.7-flash",
        "8xH200",
        {"engine": EngineKind.VLLM, "quantization": Quantization.FP8},
        "vllm serve stepfun-ai/Step-3.7-Flash-FP8 --tensor-parallel-size 8 "
        "--enable-expert-parallel --disable-cascade-attn --reasoning-parser step3p5 "
        "--enable-auto-tool-choice --tool-call-parser step3p5 "
        """--speculative-config '{"method": "mtp", "num_speculative_tokens": 3}' """
        "--trust-remote-code",
    ),
    (
        "StepFun model card, Step 3.7 NVFP4 with vLLM on 4xB200 at 8K context",
        "step-3.7-flash",
        "4xB200",
        {"engine": EngineKind.VLLM, "quantization": Quantization.NVFP4, "context": 8192},
        "vllm serve stepfun-ai/Step-3.7-Flash-NVFP4 --tensor-parallel-size 4 "
        "--gpu-memory-utilization 0.9 --enable-expert-parallel --trust-remote-code "
        "--quantization modelopt --kv-cache-dtype fp8 --max-model-len 8192 "
        "--reasoning-parser step3p5 --enable-auto-tool-choice --tool-call-parser step3p5",
    ),
    (
        "vLLM AMD recipe, Step 3.5 FP8 on 4xMI300X: TP 4 with EP",
        "step-3.5-flash",
        "4xMI300X",
        {"engine": EngineKind.VLLM, "quantization": Quantization.FP8},
        "vllm serve stepfun-ai/Step-3.5-Flash-FP8 --tensor-parallel-size 4 "
        "--enable-expert-parallel --reasoning-parser step3p5 --tool-call-parser step3p5 "
        "--enable-auto-tool-choice --trust-remote-code",
    ),
    (
        "StepFun model card, llama.cpp Q4_K_S at 16K context on a 128 GB machine",
        "step-3.5-flash",
        "Ryzen AI Max+ 395",
        {"context": 16384},
        "llama-server -c 16384 -b 2048 -ub 2048 -fa on",
    ),
]


@pytest.mark.parametrize(
    ("what", "model", "hardware", "options", "published"), RECIPES, ids=[r[0] for r in RECIPES]
)
def test_published_recipes_are_reproduced(what, model, hardware, options, published) -> None:
    result = make_plan(model, hardware, **options)
    assert result.fits, result.problems
    assert_reproduces(result.command.argv, published)


def test_amd_vllm_gets_the_published_environment() -> None:
    result = make_plan(
        "step-3.5-flash", "4xMI300X", engine=EngineKind.VLLM, quantization=Quantization.FP8
    )
    assert result.command.environment == {
        "VLLM_USE_TRITON_FLASH_ATTN": "0",
        "VLLM_ROCM_USE_AITER": "1",
        "VLLM_ROCM_USE_AITER_MOE": "0",
    }


def test_sglang_nvfp4_plan_has_no_speculative_flags_by_default() -> None:
    result = make_plan(
        "step-3.7-flash", "4xB200", engine=EngineKind.SGLANG, quantization=Quantization.NVFP4
    )
    assert not any(word.startswith("--speculative") for word in result.command.argv)
    assert result.target.kv_cache is KvCacheType.FP8


# --- memory arithmetic, checked against the card's own figures (FORMATS.md §5) ---------------


def test_architecture_matches_the_card() -> None:
    arch = MODELS["step-3.7-flash"].architecture
    assert abs(arch.backbone_params() / 1e9 - 196.8) < 0.2
    assert arch.kv_values_per_token(arch.full_attention_layers) * 2 == 48 * KIB
    assert arch.kv_values_per_token(arch.sliding_layers) * 2 * arch.sliding_window == 66 * MIB


# (hardware, engine, quantization, kv, mtp layers counted, weights GB (card), runtime reserve
#  per device as engine fraction and activations)
TABLE = [
    ("8xH200", EngineKind.SGLANG, Quantization.BF16, "bf16", 3, 475.0, 0.88, 0.0),
    ("4xH200", EngineKind.SGLANG, Quantization.FP8, "bf16", 3, 238.0, 0.88, 0.0),
    ("4xB200", EngineKind.VLLM, Quantization.NVFP4, "fp8", 3, 119.0, 0.90, 2.0),
    ("8xH100", EngineKind.VLLM, Quantization.FP8, "fp8", 3, 238.0, 0.90, 2.0),
    ("2xB300", EngineKind.VLLM, Quantization.FP8, "bf16", 3, 238.0, 0.90, 2.0),
    ("Mac Studio", EngineKind.LLAMA_CPP, Quantization.GGUF, "bf16", 0, 111.5, 1.0, 7.0),
    ("DGX Spark", EngineKind.LLAMA_CPP, Quantization.GGUF, "fp8", 0, 111.5, 1.0, 7.0),
]


@pytest.mark.parametrize(
    ("hardware", "engine", "quant", "kv", "mtp_layers", "weights_gb", "fraction", "activation_gb"),
    TABLE,
    ids=[f"{r[0]}-{r[1]}-{r[2]}" for r in TABLE],
)
@pytest.mark.parametrize("context", [4096, 32_768, 262_144])
def test_memory_arithmetic_table(
    hardware, engine, quant, kv, mtp_layers, weights_gb, fraction, activation_gb, context
) -> None:
    machine = parse_hardware(hardware)
    kv_type = KvCacheType(kv)
    result = make_plan(
        "step-3.7-flash",
        hardware,
        engine=engine,
        quantization=quant,
        kv_cache=kv_type,
        mtp=mtp_layers > 0,
        context=context,
    )
    # By hand, from the card: 48 KiB/token (x 15/12 with 3 MTP layers), 66 MiB/sequence;
    # FP8 halves both (llama.cpp's q8_0: 34 bytes per 32 values).
    scale = 1.0 if kv == "bf16" else (34 / 64 if quant is Quantization.GGUF else 0.5)
    per_token = 48 * KIB * (12 + mtp_layers) / 12 * scale
    sliding = 66 * MIB * min(context, 512) / 512 * scale
    device = (machine.profile.memory_gib - machine.profile.os_reserve_gib) * 2**30
    weights = weights_gb * GB / machine.count  # TP + EP and layer splits shard everything
    reserve = device * (1 - fraction) + activation_gb * GB
    room = (device - weights - reserve) * machine.count
    expected = int(room // (context * per_token + sliding))

    assert result.budget.weights == pytest.approx(weights, rel=1e-6)
    assert result.budget.runtime == pytest.approx(reserve, rel=1e-6)
    assert result.cache.per_token_bytes == pytest.approx(per_token)
    assert result.max_sequences == expected
    assert result.fits == (expected >= 1)


def test_data_parallel_replicates_dense_weights() -> None:
    tp = make_plan(
        "step-3.5-flash",
        "4xH200",
        engine=EngineKind.VLLM,
        quantization=Quantization.FP8,
        parallel=ParallelChoice.TENSOR,
    )
    dp = make_plan(
        "step-3.5-flash", "4xH200", engine=EngineKind.VLLM, quantization=Quantization.FP8
    )
    spec = MODELS["step-3.5-flash"]
    total = spec.weight_bytes(Quantization.FP8)
    dense = total * (1 - spec.expert_fraction())
    assert tp.budget.weights == pytest.approx(total / 4, rel=1e-6)
    assert dp.budget.weights == pytest.approx(dense + (total - dense) / 4, rel=1e-6)
    assert 3e9 < dense < 15e9  # attention, embeddings, dense FFN, shared experts


def test_fp8_kv_cache_doubles_the_sequences_that_fit() -> None:
    bf16 = make_plan("step-3.7-flash", "8xH200", engine=EngineKind.VLLM, kv_cache=KvCacheType.BF16)
    fp8 = make_plan("step-3.7-flash", "8xH200", engine=EngineKind.VLLM, kv_cache=KvCacheType.FP8)
    assert fp8.cache.per_sequence(262_144) * 2 == pytest.approx(bf16.cache.per_sequence(262_144))
    assert fp8.max_sequences in (2 * bf16.max_sequences, 2 * bf16.max_sequences + 1)


def test_sliding_window_cache_is_bounded_per_sequence() -> None:
    result = make_plan("step-3.7-flash", "8xH200", engine=EngineKind.SGLANG)
    cache = result.cache
    growth = cache.per_sequence(200_000) - cache.per_sequence(100_000)
    assert growth == pytest.approx(100_000 * cache.per_token_bytes)


# --- refusals and the nearest working alternative ------------------------------------------


def test_nvfp4_on_hopper_is_refused_with_fp8_as_the_alternative() -> None:
    result = make_plan(
        "step-3.7-flash", "4xH200", engine=EngineKind.SGLANG, quantization=Quantization.NVFP4
    )
    assert not result.fits
    assert "Blackwell" in result.problems[0]
    assert result.alternative is not None
    assert result.alternative.changes == ["quantization fp8"]
    assert result.alternative.plan.fits


def test_fp8_step35_at_tp4_on_vllm_is_refused_with_dp_as_the_alternative() -> None:
    result = make_plan(
        "step-3.5-flash",
        "4xH200",
        engine=EngineKind.VLLM,
        quantization=Quantization.FP8,
        parallel=ParallelChoice.TENSOR,
    )
    assert not result.fits
    assert "TP 4" in result.problems[0] and "320" in result.problems[0]
    assert result.alternative is not None
    assert result.alternative.changes == ["parallel dp"]
    assert "--data-parallel-size" in result.alternative.plan.command.argv


def test_not_enough_memory_names_the_shortfall_and_finds_more_devices() -> None:
    result = make_plan(
        "step-3.7-flash", "2xH100", engine=EngineKind.SGLANG, quantization=Quantization.BF16
    )
    assert not result.fits
    assert "237.5 GB per device" in result.problems[0]
    assert result.alternative is not None and result.alternative.plan.fits
    assert result.alternative.plan.target.hardware.count > 2 or (
        result.alternative.plan.target.quantization is not Quantization.BF16
    )


def test_full_context_on_a_128_gb_machine_needs_the_q8_0_cache() -> None:
    """StepFun's own advice for long context with the GGUF: -ctk q8_0 -ctv q8_0."""
    result = make_plan("step-3.7-flash", "Ryzen AI Max+ 395")
    assert not result.fits
    assert "holds 0, not 1" in result.problems[0]
    alternative = result.alternative
    assert alternative is not None and alternative.plan.fits
    assert alternative.changes == ["kv_cache fp8"]
    assert_reproduces(alternative.plan.command.argv, "llama-server -ctk q8_0 -ctv q8_0")


def test_many_long_sequences_suggest_the_context_that_fits() -> None:
    result = make_plan(
        "step-3.7-flash", "Ryzen AI Max+ 395", kv_cache=KvCacheType.FP8, concurrency=4
    )
    assert not result.fits
    alternative = result.alternative
    assert alternative is not None and alternative.plan.fits
    assert alternative.plan.target.context < 262_144
    assert alternative.plan.target.concurrency == 4


def test_a_96_gb_mac_cannot_hold_the_gguf() -> None:
    result = make_plan("step-3.7-flash", "Mac Studio", memory_gb=96, context=16384)
    assert not result.fits
    assert "111.5 GB per device" in result.problems[0]


def test_apple_plans_raise_the_gpu_wired_memory_limit() -> None:
    result = make_plan("step-3.7-flash", "Mac Studio", memory_gb=128, context=16384)
    assert result.fits
    assert result.command.before == ["sudo sysctl iogpu.wired_limit_mb=114688"]
    roomy = make_plan("step-3.7-flash", "Mac Studio", context=16384)
    assert roomy.fits and roomy.command.before == []


def test_gpu_engines_on_a_mac_are_refused_in_favour_of_llama_cpp() -> None:
    result = make_plan(
        "step-3.7-flash",
        "Mac Studio",
        engine=EngineKind.VLLM,
        quantization=Quantization.BF16,
        context=16384,
    )
    assert not result.fits
    assert "CUDA or ROCm" in " ".join(result.problems)
    assert result.alternative is not None
    assert result.alternative.plan.target.engine is EngineKind.LLAMA_CPP


def test_transformers_without_parsers_is_refused_for_agents() -> None:
    result = make_plan(
        "step-3.7-flash", "8xH200", engine=EngineKind.TRANSFORMERS, quantization=Quantization.BF16
    )
    assert not result.fits
    assert "step3p5" in result.problems[0]


def test_no_published_nvfp4_checkpoint_of_step35() -> None:
    result = make_plan(
        "step-3.5-flash", "4xB200", engine=EngineKind.VLLM, quantization=Quantization.NVFP4
    )
    assert not result.fits
    assert "publishes no nvfp4" in result.problems[0]
    own = make_plan(
        "step-3.5-flash",
        "4xB200",
        engine=EngineKind.VLLM,
        quantization=Quantization.NVFP4,
        model_path="/models/my-nvfp4",
    )
    assert own.fits and "/models/my-nvfp4" in own.command.argv


def test_odd_gpu_counts_are_refused() -> None:
    result = make_plan(
        "step-3.7-flash", "6xH200", engine=EngineKind.SGLANG, quantization=Quantization.FP8
    )
    assert not result.fits
    assert "8 KV heads" in result.problems[0]
    assert result.alternative is not None
    assert result.alternative.plan.target.hardware.count == 4


def test_parsers_off_lets_stepflash_parse_raw_completions() -> None:
    result = make_plan("step-3.7-flash", "8xH200", engine=EngineKind.VLLM, parsers=False)
    assert "--reasoning-parser" not in result.command.argv
    assert result.backend["backend"] == "completions"
    on = make_plan("step-3.7-flash", "8xH200", engine=EngineKind.SGLANG)
    assert on.backend == {
        "name": "step-3.7-flash",
        "backend": "openai",
        "replicas": ["http://127.0.0.1:30000/v1"],
        "context_length": 262_144,
        "effort": "chat_template_kwargs",
    }


def test_automatic_quantization_picks_the_most_precise_that_fits() -> None:
    assert make_plan("step-3.7-flash", "8xH200").target.quantization is Quantization.BF16
    assert make_plan("step-3.7-flash", "4xH100").target.quantization is Quantization.FP8
    assert make_plan("step-3.7-flash", "1xB200").target.quantization is Quantization.NVFP4
    assert make_plan("step-3.7-flash", "Mac Studio").target.engine is EngineKind.LLAMA_CPP


@pytest.mark.parametrize(
    ("text", "name", "count"),
    [
        ("4xH200", "H200", 4),
        ("8 x h100", "H100", 8),
        ("H200", "H200", 1),
        ("mac-studio", "Mac Studio", 1),
        ("ryzen ai max+ 395", "Ryzen AI Max+ 395", 1),
        ("2xRTX PRO 6000", "RTX PRO 6000", 2),
        ("4\u00d7GB300", "GB300", 4),
    ],
)
def test_hardware_names(text: str, name: str, count: int) -> None:
    machine = parse_hardware(text)
    assert (machine.profile.name, machine.count) == (name, count)


def test_unknown_hardware_lists_the_known_profiles() -> None:
    with pytest.raises(UnknownHardware, match="known: H100, H200"):
        parse_hardware("4xA100")
