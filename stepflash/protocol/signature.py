"""Signatures on thinking blocks, so reasoning a client sends back is known to be ours.

Anthropic clients return earlier `thinking` blocks verbatim in later turns, and the Step
template writes that reasoning back into the prompt. Signing it (HMAC-SHA256 under a server
key) means a client cannot put words in the model's past reasoning: a block that was altered,
or made elsewhere, is refused with a 400, as Anthropic's API does.

Replicas behind one load balancer must share the key (`thinking_signing_key`); a single
server keeps a random one in its cache directory so signatures survive restarts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

PREFIX = "sf1."  # the scheme's version, so the format can change without ambiguity
KEY_FILE = "thinking-signing.key"


class ThinkingSigner:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the thinking signing key must be at least 16 bytes")
        self._key = key

    def sign(self, thinking: str) -> str:
        digest = hmac.new(self._key, thinking.encode(), hashlib.sha256).digest()
        return PREFIX + base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def verify(self, thinking: str, signature: str) -> bool:
        return hmac.compare_digest(self.sign(thinking), signature)


def load_signer(configured: str | None, cache_dir: Path) -> ThinkingSigner:
    """The configured key, else one kept (created once, mode 0600) in `cache_dir`."""
    if configured:
        return ThinkingSigner(configured.encode())
    path = cache_dir / KEY_FILE
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_hex(32))
    return ThinkingSigner(path.read_text().strip().encode())
