"""API key secrets: made from 32 random bytes, stored only as a SHA-256 digest.

A key is high-entropy, so a plain SHA-256 is the right hash (slow password hashes protect
guessable secrets and would cost milliseconds per request). Lookup is by digest; the stored
digest is then compared in constant time. Keys are never logged: only `key_…` ids and the
short prefix the owner sees in `stepflash keys list`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

KEY_PREFIX = "sk-sf-"
SHOWN_PREFIX_CHARS = 12  # "sk-sf-" and six characters of the secret


@dataclass(frozen=True, slots=True)
class NewKey:
    id: str
    secret: str  # shown to its owner once, never stored

    @property
    def prefix(self) -> str:
        return self.secret[:SHOWN_PREFIX_CHARS]

    @property
    def digest(self) -> str:
        return digest(self.secret)


def new_key() -> NewKey:
    return NewKey(f"key_{secrets.token_hex(8)}", KEY_PREFIX + secrets.token_urlsafe(32))


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def matches(secret: str, stored_digest: str) -> bool:
    return hmac.compare_digest(digest(secret), stored_digest)
