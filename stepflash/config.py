"""Settings: one TOML file plus `STEPFLASH_*` environment overrides, validated at startup.

Everything has a default so `stepflash serve` runs with no file at all. Nested keys use a
double underscore in the environment: `STEPFLASH_EMBEDDED__MODEL=tiny`.
"""

from __future__ import annotations

import os
import re
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from stepflash.core.request import MediaKind
from stepflash.media.address_policy import AddressPolicy


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbeddedSettings(_Section):
    """The CPU model served out of the box (llama.cpp)."""

    model: str = Field("default", description="default | small | tiny, or a path to a .gguf file")
    served_as: list[str] = Field(
        default_factory=lambda: ["step-3.7-flash", "step-3.5-flash", "stepfun/step-3.7-flash"],
        description="Public model names this embedded model stands in for.",
    )
    n_ctx: int = Field(8192, ge=512, le=131072, description="Context window in tokens.")
    n_threads: int | None = Field(None, ge=1, description="CPU threads; default: all cores.")
    n_batch: int = Field(512, ge=8, le=8192)
    queue_size: int = Field(
        16, ge=0, le=10000, description="Requests waiting beyond the running one."
    )


class ReasoningSettings(_Section):
    """Emulated reasoning for models without native thinking: a bounded pass, then the answer."""

    budget_low: int = Field(0, ge=0, description="Reasoning tokens at effort low (0 skips it).")
    budget_medium: int = Field(256, ge=0)
    budget_high: int = Field(1024, ge=0)
    instruction: str = (
        "Before answering, think the problem through briefly inside <think> </think> tags, "
        "then give your final answer after </think>."
    )

    def budget(self, effort: str) -> int:
        return {"low": self.budget_low, "medium": self.budget_medium, "high": self.budget_high}[
            effort
        ]


class LimitSettings(_Section):
    """Every size and count a caller controls is bounded here."""

    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_messages: int = Field(2048, ge=1)
    max_tools: int = Field(128, ge=0, le=1024)
    max_n: int = Field(5, ge=1, le=16)
    max_stop_sequences: int = Field(16, ge=0)
    max_stop_length: int = Field(256, ge=1)
    max_media_parts: int = Field(16, ge=0, description="Images and videos per request.")
    default_max_tokens: int = Field(
        4096, ge=1, description="Answer budget when the caller sets none."
    )


class MediaSettings(_Section):
    """Images and videos: what is accepted, how remote URLs are fetched, what they cost.

    Every media part is fetched (remote URLs through the SSRF guard), checked and counted by
    stepflash before a backend sees it; backends receive the validated bytes, never a URL.
    """

    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(
        50_000_000,
        ge=1,
        le=178_000_000,  # Pillow refuses more itself, as a decompression bomb
        description="Width times height; larger images (and bombs) are refused.",
    )
    min_image_side: int = Field(10, ge=1, description="Pixels on the shorter side, at least.")
    max_aspect_ratio: float = Field(25.0, ge=1, description="Longer side over shorter side.")
    low_detail_tokens: int = Field(
        400, ge=1, description="Prompt tokens of a detail=low image (the hosted API's figure)."
    )
    max_video_bytes: int = Field(128 * 1024 * 1024, ge=1024)
    max_video_seconds: float = Field(300.0, gt=0)
    max_video_pixels: int = Field(3840 * 2160, ge=1, description="Frame width times height.")
    video_frames_per_second: float = Field(
        1.0, gt=0, description="Token accounting: frames sampled per second of video."
    )
    video_max_frames: int = Field(128, ge=1, description="Token accounting: frames at most.")
    fetch_timeout_seconds: float = Field(
        15.0, gt=0, description="Whole fetch of one URL, redirects included."
    )
    fetch_max_redirects: int = Field(3, ge=0, le=10)
    fetch_allow: list[str] = Field(
        default_factory=list,
        description="Non-public addresses that may be fetched anyway: a network "
        "(`10.1.0.0/16`) or one address and port (`127.0.0.1:9000`, `[::1]:9000`).",
    )
    fetch_deny: list[str] = Field(
        default_factory=list,
        description="Never fetched, even when public: host names (`cdn.example.com`, "
        "`*.example.com`) or networks (`203.0.113.0/24`).",
    )
    decode_workers: int = Field(
        2, ge=1, le=64, description="Images and videos checked at once (bounds memory)."
    )

    @model_validator(mode="after")
    def _check_lists(self) -> MediaSettings:
        AddressPolicy.from_lists(self.fetch_allow, self.fetch_deny)
        return self


class BackendKind(StrEnum):
    EMBEDDED = "embedded"  # the CPU model of the [embedded] section
    OPENAI = "openai"  # an OpenAI-compatible chat upstream (SGLang, vLLM, StepFun, OpenRouter)
    COMPLETIONS = "completions"  # a raw text-completion upstream; stepflash renders the prompt


class ModelSettings(_Section):
    """One public model and the backend that serves it."""

    name: str = Field(min_length=1, description="Public model name, e.g. step-3.7-flash.")
    aliases: list[str] = Field(default_factory=list)
    backend: BackendKind
    replicas: list[str] = Field(
        default_factory=list, description="Base URLs ending in /v1, one per replica."
    )
    upstream_model: str | None = Field(None, description="Model id upstream; default: name.")
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the upstream API key."
    )
    context_length: int = Field(262_144, ge=512)
    dialect: Literal["step3p5"] = "step3p5"
    write_bos: bool = Field(
        False, description="completions: write BOS into the prompt (most servers add it)."
    )
    effort: Literal["top_level", "chat_template_kwargs", "both", "none"] = "both"
    media: list[MediaKind] | None = Field(
        None,
        description="Media the model takes besides text. Default: image and video for openai "
        "backends; none for completions backends (images need a server that reads llama.cpp's "
        "multimodal prompt) and for the embedded models.",
    )
    image_detail: Literal["low", "high"] = Field(
        "high", description="Image detail when the caller gives none (Step 3.7 Flash: high)."
    )
    image_placeholder: str = Field(
        "<im_patch>",
        min_length=1,
        description="completions: what marks an image in the prompt (llama.cpp: <__media__>).",
    )
    connect_timeout: float = Field(5.0, gt=0)
    read_timeout: float = Field(120.0, gt=0, description="Longest silence between chunks.")
    max_attempts: int = Field(3, ge=1, le=10)
    max_in_flight: int = Field(256, ge=1)
    cooldown_seconds: float = Field(10.0, ge=0)
    health_interval_seconds: float = Field(5.0, gt=0)
    health_path: str | None = Field("/models", description="Probed with GET; none to disable.")
    affinity_chars: int = Field(2048, ge=0)

    @model_validator(mode="after")
    def _check_backend(self) -> ModelSettings:
        if self.backend is BackendKind.EMBEDDED:
            if self.replicas:
                raise ValueError("an embedded backend takes no replicas")
            if self.media:
                raise ValueError("the embedded models read text only; leave media out")
            return self
        if self.backend is BackendKind.COMPLETIONS and MediaKind.VIDEO in (self.media or ()):
            raise ValueError("a completions backend can take images but not video")
        if not self.replicas:
            raise ValueError(f"a {self.backend} backend needs at least one replica URL")
        for url in self.replicas:
            if not re.match(r"^https?://[^/\s]+", url):
                raise ValueError(f"replica {url!r} is not an http(s) URL")
        if self.api_key_env and self.api_key_env not in os.environ:
            raise ValueError(f"the environment variable {self.api_key_env} is not set")
        return self

    @property
    def accepted_media(self) -> frozenset[MediaKind]:
        if self.media is not None:
            return frozenset(self.media)
        return frozenset(MediaKind) if self.backend is BackendKind.OPENAI else frozenset()

    @property
    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class StepPlanSettings(_Section):
    """Step Plan: one routing model name that picks among configured models."""

    router_model: str = "step-router-v1"
    candidates: list[str] = Field(
        default_factory=list,
        description="Model names in order of preference; the first available one serves.",
    )


Currency = Literal["USD", "RMB"]


class Rates(_Section):
    """Prices of one model per million tokens, in the platform's currency (FORMATS.md §3)."""

    input: Decimal = Field(ge=0, description="Input tokens not read from the prompt cache.")
    cached_input: Decimal = Field(ge=0, description="Input tokens read from the prompt cache.")
    output: Decimal = Field(ge=0, description="Output tokens, reasoning included.")


class Tier(_Section):
    """A spend tier: reached once cumulative top-ups reach `topup`."""

    name: str
    topup: Decimal = Field(ge=0, description="Cumulative top-up that reaches this tier.")
    concurrency: int = Field(ge=1)
    requests_per_minute: int = Field(ge=1)
    tokens_per_minute: int = Field(ge=1)


_PRICES: dict[str, dict[str, dict[str, str]]] = {
    "USD": {
        "step-3.7-flash": {"input": "0.20", "cached_input": "0.04", "output": "1.15"},
        "step-3.5-flash": {"input": "0.09", "cached_input": "0.018", "output": "0.30"},
    },
    "RMB": {
        "step-3.7-flash": {"input": "1.35", "cached_input": "0.27", "output": "8.10"},
        # StepFun publishes 3.5's price in USD only: converted at 7.2, configurable.
        "step-3.5-flash": {"input": "0.65", "cached_input": "0.13", "output": "2.16"},
    },
}
_FEES = {  # web search per call; storage per GB per day (USD converted at 7.2)
    "USD": ("0.0056", "0.07"),
    "RMB": ("0.04", "0.50"),
}
# Tiers by cumulative top-up in RMB (FORMATS.md §3); USD thresholds converted at 7.2, rounded.
_TIER_LIMITS = [
    ("V0", 0, 0, 5, 10, 5_000_000),
    ("V1", 100, 14, 100, 1_000, 20_000_000),
    ("V2", 500, 70, 200, 5_000, 30_000_000),
    ("V3", 2_000, 280, 400, 10_000, 40_000_000),
    ("V4", 5_000, 700, 1_000, 20_000, 50_000_000),
    ("V5", 10_000, 1_400, 10_000, 200_000, 100_000_000),
]


def default_tiers(currency: Currency) -> list[Tier]:
    return [
        Tier(
            name=name,
            topup=Decimal(rmb if currency == "RMB" else usd),
            concurrency=concurrency,
            requests_per_minute=rpm,
            tokens_per_minute=tpm,
        )
        for name, rmb, usd, concurrency, rpm, tpm in _TIER_LIMITS
    ]


class BillingSettings(_Section):
    """Prices, fees and tiers. Defaults are StepFun's published ones; they change, so they
    live here. Amounts are decimal strings or numbers, kept exact (integer micro-units)."""

    currency: Currency = "USD"
    prices: dict[str, Rates] | None = Field(
        None, description="Per public model name; default: StepFun's prices in `currency`."
    )
    default_model: str = Field(
        "step-3.7-flash", description="Whose price applies to a model missing from `prices`."
    )
    web_search_per_call: Decimal | None = Field(None, ge=0)
    storage_per_gb_day: Decimal | None = Field(None, ge=0)
    tiers: list[Tier] | None = Field(None, description="Default: StepFun's V0-V5.")

    @model_validator(mode="after")
    def _fill_defaults(self) -> BillingSettings:
        if self.prices is None:
            self.prices = {m: Rates(**r) for m, r in _PRICES[self.currency].items()}
        if self.default_model not in self.prices:
            raise ValueError(f"default_model {self.default_model!r} has no price")
        search, storage = _FEES[self.currency]
        if self.web_search_per_call is None:
            self.web_search_per_call = Decimal(search)
        if self.storage_per_gb_day is None:
            self.storage_per_gb_day = Decimal(storage)
        if self.tiers is None:
            self.tiers = default_tiers(self.currency)
        if not self.tiers or self.tiers[0].topup != 0:
            raise ValueError("the first tier must start at a top-up of 0")
        if any(a.topup >= b.topup for a, b in zip(self.tiers, self.tiers[1:], strict=False)):
            raise ValueError("tiers must be in increasing order of top-up")
        return self


class AccountSettings(_Section):
    """Where accounts, keys and the ledger live, and how replicas share limits."""

    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL, e.g. postgresql+asyncpg://user@host/db. "
        "Default: a SQLite file in data_dir.",
    )
    redis_url: str | None = Field(
        None, description="Shared rate-limit state for several replicas; default: in-process."
    )
    lease_seconds: float = Field(
        30.0, gt=0, description="A crashed replica's request slots come back after this."
    )
    cache_seconds: float = Field(
        1.0,
        gt=0,
        le=60,
        description="How long a replica trusts what it read about a key or a balance; "
        "a revocation elsewhere takes effect within this.",
    )
    ledger_batch: int = Field(512, ge=1, le=10_000, description="Ledger rows per commit, at most.")
    ledger_group_ms: float | None = Field(
        None,
        ge=0,
        le=1000,
        description="While the server is busy, the least time between the starts of two "
        "ledger commits: fewer, larger groups cost fewer fsyncs, and each request waits for its "
        "group up to this much longer. A group goes at once when the server has nothing else "
        "to do. Default: 25 on SQLite (its fsync runs in this process), 0 on PostgreSQL "
        "(the server's).",
    )
    usage_rows: int = Field(10_000, ge=1, description="Rows a usage report returns, at most.")


class FileSettings(_Section):
    """`/v1/files`: limits from FORMATS.md §3; storage on a local directory."""

    directory: Path | None = Field(None, description="Default: data_dir/files.")
    max_files_per_account: int = Field(1000, ge=1)
    max_bytes_storage: int = Field(128 * 1024 * 1024, ge=1)
    max_bytes_other: int = Field(
        64 * 1024 * 1024, ge=1, description="file-extract and retrieval-* purposes."
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STEPFLASH_", env_nested_delimiter="__", extra="forbid"
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    allow_open: bool = Field(
        False, description="Allow binding a non-loopback address while no API key exists."
    )
    cache_dir: Path = Field(Path.home() / ".cache" / "stepflash")
    data_dir: Path = Field(
        Path.home() / ".local" / "share" / "stepflash",
        description="The SQLite database and uploaded files, unless configured elsewhere.",
    )
    telemetry: bool = Field(
        False, description="FastAPI's native OpenTelemetry tracing, metrics and logs."
    )
    retry_after_seconds: int = Field(
        2, ge=1, description="Retry-After sent when the queue is full."
    )
    anthropic_ping_seconds: float = Field(
        5.0, gt=0, le=300, description="Messages API: a ping event after this much silence."
    )
    thinking_signing_key: str | None = Field(
        None,
        min_length=16,
        description="Key that signs thinking blocks; replicas must share it. Default: a random "
        "key kept in cache_dir.",
    )
    embedded: EmbeddedSettings = EmbeddedSettings()
    reasoning: ReasoningSettings = ReasoningSettings()
    limits: LimitSettings = LimitSettings()
    media: MediaSettings = MediaSettings()
    models: list[ModelSettings] = Field(
        default_factory=list,
        description="Served models; with none, the embedded model serves its served_as names.",
    )
    step_plan: StepPlanSettings = StepPlanSettings()
    accounts: AccountSettings = AccountSettings()
    billing: BillingSettings = BillingSettings()
    files: FileSettings = FileSettings()

    @property
    def database_url(self) -> str:
        return self.accounts.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'stepflash.db'}"

    @property
    def files_directory(self) -> Path:
        return self.files.directory or self.data_dir / "files"

    @model_validator(mode="after")
    def _check_names(self) -> Settings:
        seen: set[str] = set()
        for model in self.models:
            for name in (model.name, *model.aliases):
                if name in seen:
                    raise ValueError(f"model name {name!r} is declared twice")
                seen.add(name)
        missing = [c for c in self.step_plan.candidates if c not in seen]
        if self.models and missing:
            raise ValueError(f"step_plan.candidates names unknown models: {missing}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the key at fault."""


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read `config_file` (TOML), apply `STEPFLASH_*` env vars, then explicit overrides."""
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file {config_file} does not exist")
    file_settings = type(
        "FileSettings",
        (Settings,),
        {"model_config": SettingsConfigDict(**{**Settings.model_config, "toml_file": config_file})},
    )
    try:
        return file_settings(**overrides)
    except ValidationError as error:
        text = config_file.read_text() if config_file else ""
        problems = "; ".join(
            _describe(e["loc"], e["msg"], config_file, text) for e in error.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from error
    except ValueError as error:  # TOML syntax errors carry the line and column
        raise ConfigError(f"cannot read {config_file}: {error}") from error


def _describe(loc: tuple[Any, ...], message: str, config_file: Path | None, text: str) -> str:
    key = ".".join(str(part) for part in loc) or "settings"
    line = locate_line(text, loc) if text else None
    where = f"{config_file}:{line}: " if line else ""
    return f"{where}{key}: {message}"


_TABLE = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-]+)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*=")


def locate_line(text: str, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the TOML key at `loc` (or of its table when the key is missing).

    TOML parsers do not report positions, so this follows table headers: `[[models]]` counts
    array entries, `[section]` opens a table, and `key =` lines belong to the latest table.
    """
    path = [str(part) for part in loc]
    counts: dict[str, int] = {}
    table: list[str] = []
    table_line: int | None = None
    best: int | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        header = _TABLE.match(line)
        if header:
            name = header.group(2)
            if header.group(1) == "[[":
                counts[name] = counts.get(name, -1) + 1
                table = [*name.split("."), str(counts[name])]
            else:
                table = name.split(".")
            if path[: len(table)] == table:
                table_line, best = number, number
            continue
        key = _KEY.match(line)
        if key and [*table, key.group(1)] == path[: len(table) + 1]:
            return number
    return best if best is not None else table_line
