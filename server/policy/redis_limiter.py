"""GCRA buckets in Redis, so that every replica spends one budget.

Each decision is one round trip: a Lua script reads and updates both of a
call's buckets atomically, on Redis's own clock (`TIME`), so replicas with
skewed clocks still agree. Settlements are sent without waiting, in order,
in batches, and kept while Redis does not answer (`pending_writes.py`).

A caller's concurrency slots are a sorted set of slot ids scored by when
their lease ends: taking one drops the expired and counts the rest, in one
script. Each replica renews the leases of its calls every `SLOT_LEASE_S / 3`,
so the slots of a replica that died are free again within `SLOT_LEASE_S`.

When Redis cannot be reached (connect or reply within `TIMEOUT_S`), the
limiter fails open to a local in-memory limiter for `RETRY_AFTER_S` before
trying Redis again: each replica then enforces the full budget on its own,
so the fleet may admit up to N times the budget until Redis is back. One
warning is logged when an outage starts and one line when it ends; a
request never waits longer than the timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from server.policy.limiter import (
    WINDOW_S,
    Budget,
    Decision,
    LimiterEvents,
    MemoryLimiter,
    Slot,
    peeked,
)
from server.policy.pending_writes import PendingWrites, Write

__all__ = ["RedisLimiter"]

logger = logging.getLogger("tandem.limits")

TIMEOUT_S = 0.25
RETRY_AFTER_S = 1.0
SLOT_LEASE_S = 15.0  # renewed every 5 s; the contract frees a dead replica's within 60 s
_WINDOW_US = int(WINDOW_S * 1_000_000)

# KEYS: buckets; ARGV: window_us, then capacity and cost per bucket.
# Returns: allowed, fits_ever, wait_us, then each bucket's TAT - now (us).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
local fits, wait, tats, news = 1, 0, {}, {}
for i = 1, #KEYS do
  local limit, cost = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  if cost > limit then fits = 0 end
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local new = tat + cost * window / limit
  tats[i], news[i] = tat, new
  if new - window - now > wait then wait = new - window - now end
end
local allowed = 0
if fits == 1 and wait <= 0 then allowed = 1 end
local out = {allowed, fits, string.format('%.0f', wait)}
for i = 1, #KEYS do
  local tat = tats[i]
  if allowed == 1 then
    tat = news[i]
    local ttl = math.ceil((tat - now) / 1000) + 1000
    redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', ttl)
  end
  out[#out + 1] = string.format('%.0f', tat - now)
end
return out
"""

# KEYS: buckets. Returns each bucket's TAT - now (us), changing nothing.
_PEEK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  out[i] = string.format('%.0f', tat - now)
end
return out
"""

# KEYS[1]: this replica's applied mark; then tokens buckets or slot sets. ARGV: per key,
# op, value, age (us), seq. Op "s" settles a bucket by value us (negative gives back) as of
# age us ago: a charge kept through an outage lands where it would have; "r" releases
# slot `value`. A write at or below the mark was applied already: a call that timed out
# may have run all the same (its reply was late or lost), and its writes are then sent
# again; the mark (writes go in order, one batch at a time) makes that once.
_APPLY = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local done = tonumber(redis.call('GET', KEYS[1]) or '-1')
local mark = done
for i = 2, #KEYS do
  local j = 4 * (i - 2)
  local op, value, seq = ARGV[j + 1], ARGV[j + 2], tonumber(ARGV[j + 4])
  if seq > done then
    mark = seq
    if op == 'r' then
      redis.call('ZREM', KEYS[i], value)
    else
      local delta, since = tonumber(value), now - tonumber(ARGV[j + 3])
      local tat = tonumber(redis.call('GET', KEYS[i]) or since)  -- gone: refilled by then
      if delta > 0 and tat < since then tat = since end
      tat = tat + delta
      if tat > now then
        local ttl = math.ceil((tat - now) / 1000) + 1000
        redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', ttl)
      else
        redis.call('DEL', KEYS[i])
      end
    end
  end
end
redis.call('SET', KEYS[1], string.format('%.0f', mark), 'PX', 600000)
return mark
"""

# KEYS[1]: slot set; ARGV: limit, slot id, lease (ms). Returns 1 if taken.
_TAKE_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + lease, ARGV[2])
redis.call('PEXPIRE', KEYS[1], lease)
return 1
"""

# KEYS: each held slot's set; ARGV: lease (ms), then each slot id. Renews the slots this
# replica holds, adding back any Redis lost (a restart, a failover, an outage past the lease):
# a call in flight keeps its slot. One released while its renewal was on the way may come
# back, for one lease at most.
_RENEW_SLOTS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now + lease, ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], lease)
end
return #KEYS
"""


def _budget(limit: int, tat_minus_now_us: float) -> Budget:
    interval_us = _WINDOW_US / limit
    ahead = max(tat_minus_now_us, 0.0)
    remaining = int((_WINDOW_US - ahead) // interval_us + 1e-9) if ahead < _WINDOW_US else 0
    return Budget(limit=limit, remaining=max(min(remaining, limit), 0), reset_s=ahead / 1e6)


class RedisLimiter:
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tandem:rl:",
        events: LimiterEvents | None = None,
        slot_lease_s: float = SLOT_LEASE_S,
    ) -> None:
        events = events or LimiterEvents()
        self._events = events  # failed calls and kept settlements (the metrics)
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S
        )
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._apply = self._redis.register_script(_APPLY)
        self._peek = self._redis.register_script(_PEEK)
        self._take_slot = self._redis.register_script(_TAKE_SLOT)
        self._renew_slots = self._redis.register_script(_RENEW_SLOTS)
        self._prefix = prefix
        self._fallback = MemoryLimiter()
        self._down_until = 0.0
        self._writes = PendingWrites(self._send_writes, events)
        self._slot_lease_ms = int(slot_lease_s * 1000)
        self._slot_ids = itertools.count()
        self._replica_id = os.urandom(6).hex()  # names this replica's slots and writes
        self._applied_mark = f"{prefix}applied:{self._replica_id}"
        self._held: dict[str, str] = {}  # this replica's slots in Redis: id -> set key
        self._renewer: asyncio.Task[None] | None = None

    async def ping(self) -> None:
        """Raise unless Redis answers (the background dependency check)."""
        await self._redis.ping()

    def _redis_down(self, action: str) -> None:
        self._events.backend_error()
        if self._down_until == 0.0:
            logger.warning(
                "rate limits: Redis unreachable while %s; failing open to local limits "
                "(each replica enforces the full budget) until it answers",
                action,
            )
        self._down_until = time.monotonic() + RETRY_AFTER_S

    def _redis_up(self) -> None:
        if self._down_until:
            logger.warning("rate limits: Redis answers again; budgets are shared once more")
            self._down_until = 0.0

    async def acquire(
        self, key: str, requests_per_minute: int | None, tokens_per_minute: int | None, tokens: int
    ) -> Decision:
        if self._down_until and time.monotonic() < self._down_until:
            return await self._local(key, requests_per_minute, tokens_per_minute, tokens)
        keys: list[str] = []
        args: list[int] = [_WINDOW_US]
        limits: list[tuple[str, int]] = []
        if requests_per_minute is not None:
            keys.append(f"{self._prefix}{key}:r")
            args += [requests_per_minute, 1]
            limits.append(("requests", requests_per_minute))
        if tokens_per_minute is not None:
            keys.append(f"{self._prefix}{key}:t")
            args += [tokens_per_minute, tokens]
            limits.append(("tokens", tokens_per_minute))
        try:
            reply = await self._acquire(keys=keys, args=args)
        except (TimeoutError, RedisError, OSError):
            self._redis_down("deciding")
            return await self._local(key, requests_per_minute, tokens_per_minute, tokens)
        self._redis_up()
        allowed, fits, wait_us = int(reply[0]), int(reply[1]), float(reply[2])
        budgets = {
            dimension: _budget(limit, float(ahead))
            for (dimension, limit), ahead in zip(limits, reply[3:], strict=True)
        }
        return Decision(
            allowed=bool(allowed),
            retry_after_s=max(wait_us, 0.0) / 1e6 if fits else WINDOW_S,
            fits_ever=bool(fits),
            requests=budgets.get("requests"),
            tokens=budgets.get("tokens"),
        )

    async def _local(
        self, key: str, requests_per_minute: int | None, tokens_per_minute: int | None, tokens: int
    ) -> Decision:
        decision = await self._fallback.acquire(key, requests_per_minute, tokens_per_minute, tokens)
        return decision._replace(local=True)

    async def peek(
        self, key: str, requests_per_minute: int | None, tokens_per_minute: int | None
    ) -> Decision:
        if self._down_until and time.monotonic() < self._down_until:
            return await self._fallback.peek(key, requests_per_minute, tokens_per_minute)
        limits = [
            (dimension, suffix, limit)
            for dimension, suffix, limit in (
                ("requests", "r", requests_per_minute),
                ("tokens", "t", tokens_per_minute),
            )
            if limit is not None
        ]
        try:
            reply = await self._peek(keys=[f"{self._prefix}{key}:{s}" for _, s, _ in limits])
        except (TimeoutError, RedisError, OSError):
            self._redis_down("reading")
            return await self._fallback.peek(key, requests_per_minute, tokens_per_minute)
        self._redis_up()
        budgets = {
            dimension: _budget(limit, float(ahead))
            for (dimension, _, limit), ahead in zip(limits, reply, strict=True)
        }
        return peeked(budgets)

    def settle(
        self, key: str, tokens_per_minute: int, delta_tokens: int, *, local: bool = False
    ) -> None:
        if local:  # reserved in the local fallback: settled there, whatever Redis is doing now
            self._fallback.settle(key, tokens_per_minute, delta_tokens)
        elif delta_tokens:
            delta_us = delta_tokens * _WINDOW_US // tokens_per_minute
            self._writes.add("s", f"{self._prefix}{key}:t", str(delta_us))

    async def take_slot(self, key: str, limit: int) -> Slot | None:
        if self._down_until and time.monotonic() < self._down_until:
            return await self._local_slot(key, limit)
        slot_id = f"{self._replica_id}:{next(self._slot_ids)}"
        slots = f"{self._prefix}{key}:c"
        try:
            taken = await self._take_slot(keys=[slots], args=[limit, slot_id, self._slot_lease_ms])
        except (TimeoutError, RedisError, OSError):
            self._redis_down("taking a slot")
            return await self._local_slot(key, limit)
        self._redis_up()
        if not int(taken):
            return None
        self._held[slot_id] = slots
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew())
        return Slot(slots, slot_id)

    async def _local_slot(self, key: str, limit: int) -> Slot | None:
        slot = await self._fallback.take_slot(key, limit)
        return None if slot is None else slot._replace(local=True)

    def release_slot(self, slot: Slot) -> None:
        if slot.local:
            self._fallback.release_slot(slot)
        elif self._held.pop(slot.id, None) is not None:  # no longer renewed from here on
            self._writes.add("r", slot.key, slot.id)

    async def _renew(self) -> None:
        """Renew the leases of this replica's slots while their calls last."""
        while True:
            await asyncio.sleep(self._slot_lease_ms / 3000)
            held = list(self._held.items())
            if not held:
                continue
            try:
                await self._renew_slots(
                    keys=[slots for _, slots in held],
                    args=[self._slot_lease_ms, *(slot_id for slot_id, _ in held)],
                )
            except (TimeoutError, RedisError, OSError):
                self._redis_down("renewing slots")
            except Exception:  # a bug: said, and the leases renewed again next time
                logger.exception("rate limits: renewing slots failed")

    async def _send_writes(self, writes: list[Write]) -> bool:
        now = time.monotonic()
        args: list[str | int] = []
        for write in writes:
            args += [write.op, write.value, int((now - write.at) * 1_000_000), write.seq]
        try:
            await self._apply(keys=[self._applied_mark, *(w.key for w in writes)], args=args)
        except (TimeoutError, RedisError, OSError):
            self._redis_down("settling")
            return False
        self._redis_up()
        return True

    async def aclose(self, drain_s: float = 2 * TIMEOUT_S) -> None:
        """Stop; settlements still pending are applied if Redis answers within `drain_s`."""
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
        await self._writes.drain(drain_s)
        await self._redis.aclose()
