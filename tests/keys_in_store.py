"""API keys written straight into a store (as the admin API will), with the fields a key
narrows its tier by."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from server.store import ApiKey, open_store
from server.store.keys import new_key

__all__ = ["bearer", "key_with", "write_keys"]


def key_with(user: str, tier: str = "free", **narrowing: Any) -> tuple[str, ApiKey]:
    """(the secret, its record) for a new key of `user` narrowing `tier` by `narrowing`
    (`models`, `requests_per_minute`, `budget_nanos`, `expires_at`, ...)."""
    secret, record = new_key(user, tier)
    return secret, dataclasses.replace(record, **narrowing)


def write_keys(store_url: str, *records: ApiKey) -> None:
    """Store `records` in the store at `store_url` (made if new)."""

    async def write() -> None:
        store = open_store(store_url)
        assert store is not None
        await store.open()
        try:
            for record in records:
                await store.create_key(record)
        finally:
            await store.aclose()

    asyncio.run(write())


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}
