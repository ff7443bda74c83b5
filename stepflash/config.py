"""Settings: one TOML file plus `STEPFLASH_*` environment overrides, validated at startup.

Everything has a default so `stepflash serve` runs with no file at all. Nested keys use a
double underscore in the environment: `STEPFLASH_EMBEDDED__MODEL=tiny`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


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
    default_max_tokens: int = Field(
        4096, ge=1, description="Answer budget when the caller sets none."
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STEPFLASH_", env_nested_delimiter="__", extra="forbid"
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    allow_open: bool = Field(
        False, description="Allow binding a non-loopback address without authentication."
    )
    cache_dir: Path = Field(Path.home() / ".cache" / "stepflash")
    retry_after_seconds: int = Field(
        2, ge=1, description="Retry-After sent when the queue is full."
    )
    embedded: EmbeddedSettings = EmbeddedSettings()
    reasoning: ReasoningSettings = ReasoningSettings()
    limits: LimitSettings = LimitSettings()

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
        where = f"in {config_file}" if config_file else "in the environment"
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        raise ConfigError(f"invalid configuration {where}: {problems}") from error
    except ValueError as error:  # TOML syntax errors carry the line and column
        raise ConfigError(f"cannot read {config_file}: {error}") from error
