"""API keys: made random, shown once, kept only as a hash."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = [
    "KEY_ADDED_COLUMNS",
    "KEY_COLUMNS",
    "KEY_PREFIX",
    "LIMITS",
    "UPDATABLE",
    "ApiKey",
    "hash_key",
    "key_from_row",
    "key_id_of",
    "key_row",
    "new_key",
]

KEY_PREFIX = "tdm_"
ID_LENGTH = 12
# the prefix, the id (`secrets.token_hex`: lowercase hex), "_", a secret
_SHAPE = re.compile(f"{KEY_PREFIX}([0-9a-f]{{{ID_LENGTH}}})_.", re.DOTALL)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key: never the key itself, only its SHA-256.

    A key may narrow its tier (`None`: the tier's own): the models it may call, its
    limits, a budget (nano-dollars over a period) and an expiry; `labels` are the
    admin's free-form metadata. Times are the epoch's seconds.
    """

    id: str
    key_hash: str
    user: str
    tier: str
    created_at: float
    revoked_at: float | None = None
    models: tuple[str, ...] | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent_requests: int | None = None
    budget_nanos: int | None = None
    budget_period: str | None = None  # daily | weekly | monthly | total, with budget_nanos
    expires_at: float | None = None
    labels: dict[str, str] = field(default_factory=dict)
    updated_at: float | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def matches(self, key: str) -> bool:
        return hmac.compare_digest(self.key_hash, hash_key(key))


# what a key's admin may change after its creation (an update's mask paths, PATCH's keys),
# and of them the limits a key narrows its tier's by
UPDATABLE = (
    "models",
    "requests_per_minute",
    "tokens_per_minute",
    "max_concurrent_requests",
    "budget",
    "expires_at",
    "labels",
)
LIMITS = ("requests_per_minute", "tokens_per_minute", "max_concurrent_requests")

_FIELDS = tuple(f.name for f in fields(ApiKey))
# the columns, in the fields' order (`key_row` writes them, `key_from_row` reads them);
# `user` is reserved in PostgreSQL, and quoted means the same in SQLite
KEY_COLUMNS = ", ".join('"user"' if name == "user" else name for name in _FIELDS)
# Columns added since `api_keys` was first made, gained at open; `{real}` is the
# backend's floating type. Keys from before read no limits and no labels.
KEY_ADDED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("models", "TEXT"),  # a JSON array, or NULL: the tier's
    ("requests_per_minute", "INTEGER"),
    ("tokens_per_minute", "INTEGER"),
    ("max_concurrent_requests", "INTEGER"),
    ("budget_nanos", "BIGINT"),
    ("budget_period", "TEXT"),
    ("expires_at", "{real}"),
    ("labels", "TEXT NOT NULL DEFAULT '{{}}'"),  # a JSON object
    ("updated_at", "{real}"),
)


def key_row(key: ApiKey) -> tuple[Any, ...]:
    """`key` as a row of KEY_COLUMNS: `models` and `labels` as JSON text."""
    models = None if key.models is None else json.dumps(list(key.models))
    labels = json.dumps(key.labels, sort_keys=True)
    return tuple(
        models if name == "models" else labels if name == "labels" else getattr(key, name)
        for name in _FIELDS
    )


def key_from_row(row: Any) -> ApiKey:
    """A row of KEY_COLUMNS as the key it stores."""
    values = dict(zip(_FIELDS, tuple(row), strict=True))
    if values["models"] is not None:
        values["models"] = tuple(json.loads(values["models"]))
    values["labels"] = json.loads(values["labels"])
    return ApiKey(**values)


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
