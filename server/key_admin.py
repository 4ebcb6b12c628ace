"""`tandem keys`: create, list and revoke API keys in the store of `usage.store`."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from server.config import Config, ConfigError
from server.store import ApiKey, Store, open_store
from server.store.keys import new_key

__all__ = ["create_key", "describe", "list_keys", "revoke_key"]


def _store(config: Config) -> Store:
    store = open_store(config.usage.store)
    if store is None:
        raise ConfigError("usage.store: API keys need a store (it is 'none')")
    return store


def _rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def describe(key: ApiKey) -> dict[str, Any]:
    """What `list` shows of a key: never the key, nor its hash."""
    return {
        "id": key.id,
        "user": key.user,
        "tier": key.tier,
        "created_at": _rfc3339(key.created_at),
        "revoked": key.revoked,
    }


async def create_key(config: Config, user: str, tier: str) -> dict[str, Any]:
    if tier not in config.tiers:
        raise ConfigError(f"--tier: tier {tier!r} does not exist in the config")
    if not user or len(user) > 256 or not user.isprintable():
        raise ConfigError("--user: expected a printable name of 1 to 256 characters")
    key, record = new_key(user, tier)
    store = _store(config)
    try:
        await store.open()
        await store.create_key(record)
    finally:
        await store.aclose()
    return {
        "id": record.id,
        "key": key,
        "user": user,
        "tier": tier,
        "created_at": _rfc3339(record.created_at),
    }


async def list_keys(config: Config) -> list[dict[str, Any]]:
    store = _store(config)
    try:
        await store.open()
        return [describe(key) for key in await store.list_keys()]
    finally:
        await store.aclose()


async def revoke_key(config: Config, key_id: str) -> bool:
    store = _store(config)
    try:
        await store.open()
        return await store.revoke_key(key_id, time.time())
    finally:
        await store.aclose()
