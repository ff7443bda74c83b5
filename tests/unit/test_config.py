"""Settings come from TOML, are overridden by STEPFLASH_* variables, and fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from stepflash.config import ConfigError, load_settings
from stepflash.core.request import MediaKind


def test_defaults_need_no_file() -> None:
    settings = load_settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.embedded.model == "default"
    assert (
        settings.reasoning.budget("low")
        < settings.reasoning.budget("medium")
        < settings.reasoning.budget("high")
    )
    assert settings.limits.max_tools == 128 and settings.limits.max_n == 5


def test_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "stepflash.toml"
    config.write_text('port = 9000\n[embedded]\nmodel = "small"\nn_ctx = 4096\n')
    monkeypatch.setenv("STEPFLASH_EMBEDDED__N_CTX", "2048")
    settings = load_settings(config)
    assert settings.port == 9000
    assert settings.embedded.model == "small"
    assert settings.embedded.n_ctx == 2048


def test_unknown_key_is_named(tmp_path: Path) -> None:
    config = tmp_path / "stepflash.toml"
    config.write_text("[embedded]\nmodle = 'tiny'\n")
    with pytest.raises(ConfigError, match=r"embedded\.modle"):
        load_settings(config)


def test_bad_value_and_bad_syntax(tmp_path: Path) -> None:
    config = tmp_path / "stepflash.toml"
    config.write_text("port = 'eighty'\n")
    with pytest.raises(ConfigError, match="port"):
        load_settings(config)
    config.write_text("port = \n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(config)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")


UPSTREAM = """
[[models]]
name = "step-3.7-flash"
backend = "openai"
replicas = ["http://gpu1:30000/v1"]

[[models]]
name = "second"
backend = "{backend}"
replicas = {replicas}
"""


def test_models_are_validated_and_errors_name_the_line(tmp_path: Path) -> None:
    config = tmp_path / "stepflash.toml"
    config.write_text(UPSTREAM.format(backend="sglang", replicas='["http://x/v1"]'))
    with pytest.raises(ConfigError, match=r"stepflash\.toml:9: models\.1\.backend"):
        load_settings(config)
    config.write_text(UPSTREAM.format(backend="openai", replicas="[]"))
    with pytest.raises(ConfigError, match=r"stepflash\.toml:7: models\.1.*at least one replica"):
        load_settings(config)
    config.write_text(UPSTREAM.format(backend="openai", replicas='["ftp://x"]'))
    with pytest.raises(ConfigError, match="not an http"):
        load_settings(config)


def test_api_key_comes_from_the_environment_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "stepflash.toml"
    config.write_text(
        UPSTREAM.format(backend="openai", replicas='["http://x/v1"]') + 'api_key_env = "MY_KEY"\n'
    )
    with pytest.raises(ConfigError, match="MY_KEY is not set"):
        load_settings(config)
    monkeypatch.setenv("MY_KEY", "sk-secret")
    assert load_settings(config).models[1].api_key == "sk-secret"


def test_duplicate_names_and_unknown_step_plan_candidates(tmp_path: Path) -> None:
    config = tmp_path / "stepflash.toml"
    config.write_text(
        UPSTREAM.format(backend="openai", replicas='["http://x/v1"]')
        + 'aliases = ["step-3.7-flash"]\n'
    )
    with pytest.raises(ConfigError, match="declared twice"):
        load_settings(config)
    config.write_text(
        UPSTREAM.format(backend="openai", replicas='["http://x/v1"]')
        + '[step_plan]\ncandidates = ["nope"]\n'
    )
    with pytest.raises(ConfigError, match="unknown models"):
        load_settings(config)


def test_media_defaults_by_backend_and_impossible_media_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "stepflash.toml"
    config.write_text(UPSTREAM.format(backend="openai", replicas='["http://x/v1"]'))
    assert load_settings(config).models[1].accepted_media == {MediaKind.IMAGE, MediaKind.VIDEO}
    config.write_text(UPSTREAM.format(backend="completions", replicas='["http://x/v1"]'))
    assert load_settings(config).models[1].accepted_media == frozenset()
    config.write_text(config.read_text() + 'media = ["image"]\n')
    assert load_settings(config).models[1].accepted_media == {MediaKind.IMAGE}
    config.write_text(config.read_text().replace('["image"]', '["image", "video"]'))
    with pytest.raises(ConfigError, match="images but not video"):
        load_settings(config)
    config.write_text(UPSTREAM.format(backend="embedded", replicas="[]") + 'media = ["image"]\n')
    with pytest.raises(ConfigError, match="read text only"):
        load_settings(config)
