"""API keys as the policy sees them: looked up by id, cached for `auth.key_cache_s`.

Validation does not hit the database on every request: each key id is
fetched at most once per TTL, however many requests ask for it at once (they
share the one lookup in flight). Unknown ids are remembered for the TTL too,
so a flood of made-up keys (`tdm_<12 hex>_x` needs no credential) reaches the
store once per id, not once per request; a key created later works within
the TTL. A key revoked anywhere is refused everywhere within the TTL.
While the store is down, a cached key is checked from the cache, however old;
a key with no entry cannot be checked at all: `UnavailableError` (503).

Memory is bounded apart for the two: at most `max_keys` real keys (the least
recently fetched go first) and `max_unknown` made-up ids (the oldest go
first), so no number of made-up ids can push a real key out of the cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from server.errors import UnavailableError
from server.store import ApiKey, Store

__all__ = ["KeyCache"]

MAX_KEYS = 100_000
MAX_UNKNOWN = 10_000  # ~1.5 MB
logger = logging.getLogger("tandem.auth")


class KeyCache:
    def __init__(
        self,
        store: Store,
        ttl_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_lookup: Callable[[str], None] = lambda result: None,
        max_keys: int = MAX_KEYS,
        max_unknown: int = MAX_UNKNOWN,
    ) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._clock = clock
        self._on_lookup = on_lookup
        self._max_keys = max_keys
        self._max_unknown = max_unknown
        # by id, in the order fetched (a refetch moves an id to the end): (when, record)
        self._keys: OrderedDict[str, tuple[float, ApiKey]] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()  # made-up ids, alike: when
        self._fetching: dict[str, asyncio.Task[ApiKey | None]] = {}

    def remembered(self) -> tuple[int, int]:
        """(real keys, unknown ids) held now."""
        return len(self._keys), len(self._unknown)

    async def lookup(self, key_id: str) -> ApiKey | None:
        now = self._clock()
        entry = self._keys.get(key_id)
        if entry is not None:
            if now - entry[0] < self._ttl_s:
                return entry[1]
        else:
            seen = self._unknown.get(key_id)
            if seen is not None and now - seen < self._ttl_s:
                return None
        fetching = self._fetching.get(key_id)
        if fetching is None:
            fetching = self._fetching[key_id] = asyncio.ensure_future(self._fetch(key_id, now))
            fetching.add_done_callback(lambda task: self._fetched(key_id, task))
        # shielded: a caller that goes away does not cancel the others' lookup
        return await asyncio.shield(fetching)

    async def _fetch(self, key_id: str, asked: float) -> ApiKey | None:
        """The store's answer, remembered as of when it was asked (never fresher)."""
        try:
            record = await self._store.find_key(key_id)
        except Exception as exc:
            self._on_lookup("failed")
            entry = self._keys.get(key_id)
            if entry is None and key_id not in self._unknown:
                logger.warning(
                    "key store unreachable; key %s cannot be checked (%s)",
                    key_id,
                    type(exc).__name__,
                )
                raise UnavailableError(
                    "the key store is unavailable; retry shortly", code="key_store_unavailable"
                ) from None
            logger.warning("key store unreachable; key %s checked from the cache", key_id)
            return None if entry is None else entry[1]  # what we knew beats refusing all
        self._on_lookup("unknown" if record is None else "found")
        self._remember(key_id, record, asked)
        return record

    def _remember(self, key_id: str, record: ApiKey | None, now: float) -> None:
        keys, unknown = self._keys, self._unknown
        if record is None:
            keys.pop(key_id, None)
            unknown.pop(key_id, None)
            while unknown:  # the oldest first: past the bound, or expired
                seen = next(iter(unknown.values()))
                if len(unknown) < self._max_unknown and now - seen < self._ttl_s:
                    break
                unknown.popitem(last=False)
            unknown[key_id] = now
            return
        unknown.pop(key_id, None)
        keys[key_id] = (now, record)
        keys.move_to_end(key_id)
        while len(keys) > self._max_keys:
            keys.popitem(last=False)

    def _fetched(self, key_id: str, task: asyncio.Task[ApiKey | None]) -> None:
        del self._fetching[key_id]
        if not task.cancelled():
            task.exception()  # retrieved here: every caller may have gone
