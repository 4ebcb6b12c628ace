"""API keys as the policy sees them: looked up by id, cached for `auth.key_cache_s`.

Validation does not hit the database on every request: each key id is
fetched at most once per TTL (unknown ids too, so garbage keys cannot
hammer the store). A key revoked anywhere is refused everywhere within the TTL.
While the store is down, a cached key is checked from the cache, however old;
a key with no entry cannot be checked at all: `UnavailableError` (503).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from server.errors import UnavailableError
from server.store import ApiKey, Store

__all__ = ["KeyCache"]

MAX_ENTRIES = 100_000
logger = logging.getLogger("tandem.auth")


class KeyCache:
    def __init__(
        self, store: Store, ttl_s: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[str, tuple[float, ApiKey | None]] = {}

    async def lookup(self, key_id: str) -> ApiKey | None:
        now = self._clock()
        entry = self._entries.get(key_id)
        if entry is not None and now - entry[0] < self._ttl_s:
            return entry[1]
        try:
            record = await self._store.find_key(key_id)
        except Exception as exc:
            if entry is None:
                logger.warning(
                    "key store unreachable; key %s cannot be checked (%s)",
                    key_id,
                    type(exc).__name__,
                )
                raise UnavailableError(
                    "the key store is unavailable; retry shortly", code="key_store_unavailable"
                ) from None
            logger.warning("key store unreachable; key %s checked from the cache", key_id)
            return entry[1]  # what we knew is better than refusing every caller
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[key_id] = (now, record)
        return record
