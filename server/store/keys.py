"""API keys: made random, shown once, kept only as a hash."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

__all__ = ["KEY_PREFIX", "ApiKey", "hash_key", "key_id_of", "new_key"]

KEY_PREFIX = "tdm_"
ID_LENGTH = 12
# the prefix, the id (`secrets.token_hex`: lowercase hex), "_", a secret
_SHAPE = re.compile(f"{KEY_PREFIX}([0-9a-f]{{{ID_LENGTH}}})_.", re.DOTALL)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key: never the key itself, only its SHA-256."""

    id: str
    key_hash: str
    user: str
    tier: str
    created_at: float
    revoked_at: float | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def matches(self, key: str) -> bool:
        return hmac.compare_digest(self.key_hash, hash_key(key))


def hash_key(key: str) -> str:
    # the key carries 256 random bits, so a plain digest is enough: nothing to brute-force
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(user: str, tier: str) -> tuple[str, ApiKey]:
    """(the key, to show once; its record, to store)."""
    key_id = secrets.token_hex(ID_LENGTH // 2)
    key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return key, ApiKey(
        id=key_id, key_hash=hash_key(key), user=user, tier=tier, created_at=time.time()
    )


def key_id_of(token: str) -> str | None:
    """The id inside a presented API key, or None if it is not shaped like one (then
    nothing asks the store about it)."""
    shaped = _SHAPE.match(token)
    return shaped[1] if shaped else None
