"""API keys as the policy sees them: looked up by id, cached for `auth.key_cache_s`.

Validation does not hit the database on every request: each key id is
fetched at most once per TTL, however many requests ask for it at once (they
share the one lookup in flight). A key revoked anywhere is refused everywhere
within the TTL. While the store is down, a cached key is checked from the
cache, however old (and not asked again for a TTL); a key with no entry cannot
be checked at all: `UnavailableError` (503), the store asked again by the next
such request (one read of ids at a time), so a fresh key works as soon as the
store is back. One warning says when the store stops answering, one when it is
back.

Made-up ids (`tdm_<12 hex>_x` needs no credential) never reach the store one by
one: the cache holds the set of ids the store has (ids only, never secrets),
read whole at start, then, at most once per TTL and only when asked about an id
it does not hold, the ids created since the last read (less `CLOCK_SKEW_S`, for
replicas whose clocks disagree). An id missing from a set younger than the TTL
is unknown without a query, so a flood of made-up ids costs one read of the new
ids per TTL, and a key made elsewhere works within the TTL (plus one read).

Memory is bounded: at most `max_ids` ids (~95 bytes each: ~48 MB at the
default); a store with more keys than that makes the set useless, so it is
dropped and ids are asked one by one, unknown ones remembered for the TTL.
Apart from it, at most `max_keys` real keys (the least recently fetched go
first) and `max_unknown` unknown ids (the oldest go first), so no number of
made-up ids can push a real key out of the cache.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable

from server.errors import UnavailableError
from server.store import ApiKey, Store

__all__ = ["KeyCache"]

MAX_IDS = 500_000
MAX_KEYS = 100_000
MAX_UNKNOWN = 10_000  # ~1.5 MB
CLOCK_SKEW_S = 60.0  # a key stamped this much before the last read of ids is still read
logger = logging.getLogger("tandem.auth")


class KeyCache:
    def __init__(
        self,
        store: Store,
        ttl_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_lookup: Callable[[str], None] = lambda result: None,
        max_keys: int = MAX_KEYS,
        max_unknown: int = MAX_UNKNOWN,
        max_ids: int = MAX_IDS,
    ) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._on_lookup = on_lookup
        self._max_keys = max_keys
        self._max_unknown = max_unknown
        # by id, in the order fetched (a refetch moves an id to the end): (when, record)
        self._keys: OrderedDict[str, tuple[float, ApiKey]] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()  # made-up ids, alike: when
        self._fetching: dict[str, asyncio.Task[ApiKey | None]] = {}
        self._max_ids = max_ids
        self._ids: set[str] | None = set()  # the store's key ids; None past max_ids
        self._ids_read_at = -math.inf  # (clock) when the last read of ids was asked
        self._ids_since = -math.inf  # (the epoch's s) the next read asks from this created_at
        self._reading: asyncio.Task[None] | None = None
        self._store_down = False  # the last query failed (warned of once)

    async def load(self) -> None:
        """Read the store's key ids (at start, so that the first callers need not)."""
        await self._read_ids(self._clock())

    async def lookup(self, key_id: str) -> ApiKey | None:
        now = self._clock()
        entry = self._keys.get(key_id)
        if entry is not None:
            if now - entry[0] < self._ttl_s:
                return entry[1]
        else:
            if not await self._may_exist(key_id, now):
                return None
            seen = self._unknown.get(key_id)
            if seen is not None and now - seen < self._ttl_s:
                return None
        fetching = self._fetching.get(key_id)
        if fetching is None:
            fetching = self._fetching[key_id] = asyncio.ensure_future(self._fetch(key_id, now))
            fetching.add_done_callback(lambda task: self._fetched(key_id, task))
        # shielded: a caller that goes away does not cancel the others' lookup
        return await asyncio.shield(fetching)

    async def _may_exist(self, key_id: str, now: float) -> bool:
        """False if the store has no key `key_id`, as of a read of ids younger than the TTL."""
        ids = self._ids
        if ids is None or key_id in ids:
            return True
        if now - self._ids_read_at < self._ttl_s:
            return False
        await self._read_ids(now)
        return self._ids is None or key_id in self._ids

    async def _read_ids(self, now: float) -> None:
        """The one read of new ids in flight, started if none is (shielded: a caller
        that goes away does not cancel it for the others)."""
        reading = self._reading
        if reading is None:
            reading = self._reading = asyncio.ensure_future(self._read_new_ids(now))
            reading.add_done_callback(self._read)
        await asyncio.shield(reading)

    async def _read_new_ids(self, asked: float) -> None:
        since = self._wall_clock() - CLOCK_SKEW_S
        try:
            new_ids = await self._store.key_ids_since(self._ids_since)
        except Exception as exc:
            self._store_failed(exc)
            raise _unavailable() from None
        self._store_answered()
        self._on_lookup("ids")
        ids = self._ids
        if ids is None:
            return
        ids.update(new_ids)
        if len(ids) > self._max_ids:
            logger.warning("more than %d API keys: each key id is looked up alone", self._max_ids)
            self._ids = None
        self._ids_read_at, self._ids_since = asked, since

    def _read(self, task: asyncio.Task[None]) -> None:
        self._reading = None
        if not task.cancelled():
            task.exception()  # retrieved here: every caller may have gone

    async def _fetch(self, key_id: str, asked: float) -> ApiKey | None:
        """The store's answer, remembered as of when it was asked (never fresher)."""
        entry = self._keys.get(key_id)
        known = entry is not None or key_id in self._unknown
        try:
            record = await self._store.find_key(key_id)
        except Exception as exc:
            self._store_failed(exc)
            if not known:
                raise _unavailable() from None
            # what we knew beats refusing all; asked again in a TTL, not on every request
            record = None if entry is None else entry[1]
            self._remember(key_id, record, asked)
            return record
        self._store_answered()
        self._on_lookup("unknown" if record is None else "found")
        self._remember(key_id, record, asked)
        return record

    def _store_failed(self, exc: Exception) -> None:
        self._on_lookup("failed")
        if not self._store_down:
            logger.warning(
                "key store unreachable (%s): cached keys are checked from the cache, "
                "others refused with 503, until it answers",
                type(exc).__name__,
            )
        self._store_down = True

    def _store_answered(self) -> None:
        if self._store_down:
            self._store_down = False
            logger.warning("key store answers again")

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


def _unavailable() -> UnavailableError:
    return UnavailableError(
        "the key store is unavailable; retry shortly", code="key_store_unavailable"
    )
