"""Write a backend entry into stepflash.toml without disturbing the rest of the file.

tomlkit keeps the user's comments and layout. The result is validated as a whole before it
replaces the file (atomically), so a launch never leaves an unusable configuration behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import AoT

from stepflash.config import load_settings


def upsert_model(path: Path, entry: dict[str, Any]) -> str:
    """Add or replace the `[[models]]` entry named `entry["name"]`; says which it did."""
    document = tomlkit.parse(path.read_text()) if path.exists() else tomlkit.document()
    models = document.get("models")
    if models is None:
        models = tomlkit.aot()
        document["models"] = models
    if not isinstance(models, AoT):
        raise ValueError(f"{path}: `models` must be an array of tables ([[models]])")
    action = "added"
    for index, table in enumerate(models):
        if table.get("name") == entry["name"]:
            models[index] = tomlkit.item(entry)
            action = "replaced"
            break
    else:
        models.append(tomlkit.item(entry))
    _write_validated(path, tomlkit.dumps(document))
    return action


def _write_validated(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        load_settings(Path(temporary))  # raises ConfigError, naming the key at fault
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
