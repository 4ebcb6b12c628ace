"""Rate limiting as token buckets, by GCRA: capacity = the per-minute figure, refilled continuously.

GCRA keeps one number per bucket, the theoretical arrival time (TAT): the
moment the bucket would be full again. A request of cost n at time `now`
moves it to max(TAT, now) + n * (60 s / capacity) and is allowed if that
lands within a minute of `now`. No fixed windows, no per-request history.

A call's requests and tokens are decided together: both fit, or neither is
taken. Tokens are reserved as estimated and settled to what was used later;
settling may leave a bucket below zero (its TAT beyond now + 60 s).

Beside the buckets, a caller may hold at most `max_concurrent_requests` slots
at once: a slot is taken at admission and released when the call ends.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import NamedTuple, Protocol

__all__ = [
    "WINDOW_S",
    "Budget",
    "Decision",
    "Limiter",
    "LimiterEvents",
    "MemoryLimiter",
    "Slot",
    "peeked",
]

WINDOW_S = 60.0  # capacities are per minute


class Budget(NamedTuple):  # tuples: built on every call, at a third of a frozen dataclass's cost
    """One bucket's state after a decision, as the x-ratelimit headers say it."""

    limit: int
    remaining: int
    reset_s: float  # until the bucket is full again


class Decision(NamedTuple):
    allowed: bool
    retry_after_s: float
    fits_ever: bool  # False: the cost exceeds the whole capacity; waiting will not help
    requests: Budget | None
    tokens: Budget | None
    local: bool = False  # decided by a local fallback (shared backend unreachable)


class Slot(NamedTuple):
    """One call's place among its caller's calls in flight."""

    key: str
    id: str = ""
    local: bool = False  # taken from the local fallback (shared backend unreachable)


def _ignore(count: int = 1) -> None:
    return None


class LimiterEvents(NamedTuple):
    """What a shared backend reports (to the metrics), each with a count."""

    backend_error: Callable[[], None] = _ignore
    settlement_deferred: Callable[[int], None] = _ignore  # could not reach it: kept
    settlement_applied_late: Callable[[int], None] = _ignore  # a kept one, applied
    settlement_dropped: Callable[[int], None] = _ignore  # a kept one, given up


def peeked(budgets: dict[str, Budget]) -> Decision:
    """What `peek` answers: allowed, nothing taken, the buckets' state by dimension
    (`requests`, `tokens`; one without a limit is absent)."""
    return Decision(True, 0.0, True, budgets.get("requests"), budgets.get("tokens"))


def _budget(limit: int, tat: float, now: float) -> Budget:
    # from how far the bucket is ahead of now, not from `now + WINDOW_S - tat`: at a
    # monotonic clock of hours, that sum loses the bits that made a full bucket full
    ahead = max(tat - now, 0.0)
    remaining = max(math.floor((WINDOW_S - ahead) * limit / WINDOW_S + 1e-9), 0)
    return Budget(limit, min(remaining, limit), ahead)


class Limiter(Protocol):
    async def acquire(
        self, key: str, requests_per_minute: int | None, tokens_per_minute: int | None, tokens: int
    ) -> Decision: ...

    def settle(
        self, key: str, tokens_per_minute: int, delta_tokens: int, *, local: bool = False
    ) -> None:
        """Correct a reservation; `local`: it was decided by the local fallback."""
        ...

    async def peek(
        self, key: str, requests_per_minute: int | None, tokens_per_minute: int | None
    ) -> Decision:
        """The buckets' state, taking nothing."""
        ...

    async def take_slot(self, key: str, limit: int) -> Slot | None:
        """One of `key`'s `limit` slots, or None when all are held."""
        ...

    def release_slot(self, slot: Slot) -> None:
        """Give a slot back (once, however its call ended)."""
        ...

    async def aclose(self, drain_s: float = 0.0) -> None:
        """Stop; writes still pending may take up to `drain_s`."""
        ...


# a whole capacity taken in steps of 60/7 s sums to a hair over 60 s: not a wait
_ROUNDING_S = 1e-9


class MemoryLimiter:
    """Buckets in this process. With N workers each gets 1/N of every capacity."""

    PRUNE_EVERY = 10_000

    def __init__(self, *, share: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._tat: dict[str, float] = {}
        self._held: dict[str, int] = {}  # slots in use, by caller
        self._share = share
        self._clock = clock
        self._decisions = 0

    def _capacity(self, per_minute: int) -> int:
        return max(int(per_minute * self._share), 1)

    async def acquire(
        self, key: str, requests_per_minute: int | None, tokens_per_minute: int | None, tokens: int
    ) -> Decision:
        """Take one request and `tokens` tokens from `key`'s buckets, or neither."""
        now = self._clock()
        self._maybe_prune(now)
        tats = self._tat
        # in time ahead of now, not absolute times: (now + 60) - 60 - now is not always 0
        fits_ever, wait = True, 0.0
        if requests_per_minute is not None:
            r_bucket, r_limit = key + ":r", self._capacity(requests_per_minute)
            r_ahead = max(tats.get(r_bucket, now) - now, 0.0) + WINDOW_S / r_limit
            wait = r_ahead - WINDOW_S
        if tokens_per_minute is not None:
            t_bucket, t_limit = key + ":t", self._capacity(tokens_per_minute)
            t_ahead = max(tats.get(t_bucket, now) - now, 0.0) + tokens * WINDOW_S / t_limit
            wait = max(wait, t_ahead - WINDOW_S)
            fits_ever = tokens <= t_limit
        allowed = fits_ever and wait <= _ROUNDING_S
        requests: Budget | None = None
        tokens_budget: Budget | None = None
        if requests_per_minute is not None:
            if allowed:
                tats[r_bucket] = now + r_ahead
            requests = _budget(r_limit, tats.get(r_bucket, now), now)
        if tokens_per_minute is not None:
            if allowed:
                tats[t_bucket] = now + t_ahead
            tokens_budget = _budget(t_limit, tats.get(t_bucket, now), now)
        return Decision(
            allowed,
            max(wait, 0.0) if fits_ever else WINDOW_S,
            fits_ever,
            requests,
            tokens_budget,
        )

    async def peek(
        self, key: str, requests_per_minute: int | None, tokens_per_minute: int | None
    ) -> Decision:
        now = self._clock()
        budgets: dict[str, Budget] = {}
        if requests_per_minute is not None:
            limit = self._capacity(requests_per_minute)
            budgets["requests"] = _budget(limit, self._tat.get(f"{key}:r", now), now)
        if tokens_per_minute is not None:
            limit = self._capacity(tokens_per_minute)
            budgets["tokens"] = _budget(limit, self._tat.get(f"{key}:t", now), now)
        return peeked(budgets)

    def settle(
        self, key: str, tokens_per_minute: int, delta_tokens: int, *, local: bool = False
    ) -> None:
        """Correct a reservation by what was really used (negative: give back)."""
        if not delta_tokens:
            return
        bucket = f"{key}:t"
        limit = self._capacity(tokens_per_minute)
        now = self._clock()
        tat = self._tat.get(bucket, now)
        if delta_tokens > 0:  # charging more: from now if the bucket had refilled meanwhile
            tat = max(tat, now)
        self._tat[bucket] = tat + delta_tokens * WINDOW_S / limit

    def slot_capacity(self, limit: int) -> int:
        """This process's share of a caller's slots: with N workers, ceil(limit / N)."""
        return max(math.ceil(limit * self._share - 1e-9), 1)

    async def take_slot(self, key: str, limit: int) -> Slot | None:
        held = self._held.get(key, 0)
        if held >= self.slot_capacity(limit):
            return None
        self._held[key] = held + 1
        return Slot(key)

    def release_slot(self, slot: Slot) -> None:
        held = self._held.get(slot.key, 0) - 1
        if held > 0:
            self._held[slot.key] = held
        else:  # an idle caller costs no memory
            self._held.pop(slot.key, None)

    async def aclose(self, drain_s: float = 0.0) -> None:
        return None

    def _maybe_prune(self, now: float) -> None:
        """Forget full buckets now and then, so idle callers cost no memory."""
        self._decisions += 1
        if self._decisions % self.PRUNE_EVERY == 0:
            self._tat = {k: v for k, v in self._tat.items() if v > now}
