"""What the benchmark sends: synthetic prompts of a given length, or prompts from a file.

Synthetic prompts are words drawn from a fixed list with a per-request prefix, so no two
prompts share a cacheable prefix beyond the first word; roughly one token per word for
BPE tokenizers. The server's reported `prompt_tokens` is what the results show.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TEXT = (
    "the model serves requests quickly while tokens stream back to every client across many "
    "replicas and reports usage for billing with cached prefixes measured in blocks of memory "
    "on each accelerator under steady load over time"
)
_WORDS = _TEXT.split()
MAX_PROMPTS_FILE_BYTES = 64 * 1024 * 1024


class WorkloadError(ValueError):
    """The prompts file cannot be used; the message says which line and why."""


@dataclass(frozen=True)
class Workload:
    """A cycle of prompts (chat messages) and the answer length to ask for."""

    prompts: list[list[dict[str, Any]]]
    output_tokens: int

    def messages(self, index: int) -> list[dict[str, Any]]:
        return self.prompts[index % len(self.prompts)]


def synthetic(input_tokens: int, output_tokens: int, count: int, seed: int) -> Workload:
    rng = random.Random(seed)
    prompts = []
    for index in range(count):
        words = [f"request{index}:"] + [rng.choice(_WORDS) for _ in range(input_tokens - 1)]
        prompts.append([{"role": "user", "content": " ".join(words)}])
    return Workload(prompts, output_tokens)


def from_file(path: Path, output_tokens: int) -> Workload:
    """JSON lines: each a `{"prompt": "..."}` or `{"messages": [...]}` object."""
    if path.stat().st_size > MAX_PROMPTS_FILE_BYTES:
        raise WorkloadError(f"{path} is over {MAX_PROMPTS_FILE_BYTES // 2**20} MiB")
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise WorkloadError(f"{path}:{number}: not JSON ({error.msg})") from None
        if isinstance(item, dict) and isinstance(item.get("prompt"), str):
            prompts.append([{"role": "user", "content": item["prompt"]}])
        elif isinstance(item, dict) and isinstance(item.get("messages"), list):
            prompts.append(item["messages"])
        else:
            raise WorkloadError(
                f'{path}:{number}: expected {{"prompt": ...}} or {{"messages": ...}}'
            )
    if not prompts:
        raise WorkloadError(f"{path} holds no prompts")
    return Workload(prompts, output_tokens)
