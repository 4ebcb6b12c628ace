"""GCRA buckets in Redis, so that every replica spends one budget.

Each decision is one round trip: a Lua script reads and updates both of a
call's buckets atomically, on Redis's own clock (`TIME`), so replicas with
skewed clocks still agree. Settlements are sent without waiting.

When Redis cannot be reached (connect or reply within `TIMEOUT_S`), the
limiter fails open to a local in-memory limiter for `RETRY_AFTER_S` before
trying Redis again: each replica then enforces the full budget on its own,
so the fleet may admit up to N times the budget until Redis is back. One
warning is logged when an outage starts and one line when it ends; a
request never waits longer than the timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from server.policy.limiter import WINDOW_S, Budget, Decision, MemoryLimiter

__all__ = ["RedisLimiter"]

logger = logging.getLogger("tandem.limits")

TIMEOUT_S = 0.25
RETRY_AFTER_S = 1.0
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

# KEYS[1]: tokens bucket; ARGV[1]: delta in us (negative gives back).
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local delta = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if delta > 0 and tat < now then tat = now end
tat = tat + delta
if tat > now then
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
else
  redis.call('DEL', KEYS[1])
end
return 1
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
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        self._on_error = on_error  # counts every failed call (a metric)
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S
        )
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._settle = self._redis.register_script(_SETTLE)
        self._peek = self._redis.register_script(_PEEK)
        self._prefix = prefix
        self._fallback = MemoryLimiter()
        self._down_until = 0.0
        self._pending: set[asyncio.Task[Any]] = set()

    async def ping(self) -> None:
        """Raise unless Redis answers (the background dependency check)."""
        await self._redis.ping()

    def _redis_down(self, action: str) -> None:
        self._on_error()
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
        return Decision(True, 0.0, True, budgets.get("requests"), budgets.get("tokens"))

    def settle(
        self, key: str, tokens_per_minute: int, delta_tokens: int, *, local: bool = False
    ) -> None:
        if not delta_tokens:
            return
        if local:  # reserved in the local fallback: settled there, whatever Redis is doing now
            self._fallback.settle(key, tokens_per_minute, delta_tokens)
            return
        delta_us = delta_tokens * _WINDOW_US // tokens_per_minute
        task = asyncio.get_running_loop().create_task(self._send_settle(key, delta_us))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send_settle(self, key: str, delta_us: int) -> None:
        try:
            await self._settle(keys=[f"{self._prefix}{key}:t"], args=[delta_us])
        except (TimeoutError, RedisError, OSError):
            self._redis_down("settling")

    async def aclose(self) -> None:
        if self._pending:
            await asyncio.wait(self._pending, timeout=2 * TIMEOUT_S)
        await self._redis.aclose()
