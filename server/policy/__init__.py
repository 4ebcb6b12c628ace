"""The one policy every door applies: who the caller is, and whether it may go now.

Two entry points, each called from exactly one place:
- `authenticate` by the doors (the gRPC method wrapper and the HTTP
  dependency), before the core sees the call;
- `admit` by the core, once the model is known, returning an `Admission`
  the core settles when the call ends.

Credentials are `authorization: Bearer <token>`: an admin key from the
config, an API key from the store (`tandem keys`; caller = its user), or a
JWT (caller = `sub`, tier = the tier claim, else `free`). With
`auth.required: false`, a caller without a valid credential is anonymous
(tier `free`). Rate limits apply per caller and tier, anonymous callers
sharing one budget, admin callers having none. An API key may narrow its tier
(models, limits, a budget, an expiry): its limits apply with the tier's, the
tighter winning. Budgets (money, server/policy/spending.py) are reserved last,
after the slot and the token buckets, so a call refused by a rate limit costs
no trip to the store.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from server.config import Config
from server.context import ANONYMOUS, CallContext, Caller, KeyNarrowing, new_id
from server.errors import (
    AuthenticationError,
    PermissionDeniedError,
    RateLimitError,
    echoed,
)
from server.policy.headers import format_duration, rate_limit_headers
from server.policy.key_cache import KeyCache
from server.policy.limiter import Limiter, LimiterEvents, MemoryLimiter, Slot
from server.policy.spending import (
    BudgetKeeper,
    BudgetPlan,
    Hold,
    budget_headers,
    budget_plans,
    budget_refusal,
    near_limit,
    scopes_at,
)
from server.store.keys import ApiKey, key_id_of

if TYPE_CHECKING:
    from server.policy.jwt_auth import JwtVerifier

__all__ = ["Admission", "Hold", "Policy", "build_limiter"]

# what a key narrows, made once per key record fetched (the key cache's records are
# replaced on each refetch, so a record's identity says whether it changed)
_MAX_NARROWINGS = 100_000
# (requests and tokens per minute, requests in flight); which of them are the key's
_Limits = tuple[int | None, int | None, int | None]


@dataclass(slots=True, eq=False)
class Admission:
    """A granted call's token reservation and concurrency slot: settled once, however
    the call ends, to the tokens it really used, the slot given back."""

    limiter: Limiter | None = None  # None once settled, and for a call with no limits
    key: str = ""
    tokens_per_minute: int | None = None
    reserved: int = 0
    local: bool = False
    slot: Slot | None = None
    hold: Hold | None = None  # its budgets' reservation, for a caller with a budget

    def settle(self, used_tokens: int) -> None:
        limiter, self.limiter = self.limiter, None  # once
        if limiter is None:
            return
        try:
            if self.tokens_per_minute is not None:
                limiter.settle(
                    self.key, self.tokens_per_minute, used_tokens - self.reserved, local=self.local
                )
        finally:
            if self.slot is not None:
                limiter.release_slot(self.slot)


_UNLIMITED = Admission()


DEFAULT_TIER = "free"


class Policy:
    def __init__(
        self,
        config: Config,
        limiter: Limiter | None = None,
        keys: KeyCache | None = None,
        budgets: BudgetKeeper | None = None,
    ) -> None:
        self._required = config.auth.required
        self._tiers = config.tiers
        self._limiter = limiter
        self._budgets = budgets  # None: no store, so no budgets (the config says so)
        self._deny_unpriced = config.budgets.unpriced == "deny"
        self._narrowings: dict[str, tuple[ApiKey, KeyNarrowing | None]] = {}
        self._admin_keys = tuple(k.encode() for k in config.auth.admin_keys)
        self._jwt: JwtVerifier | None = None
        if config.auth.jwt is not None:
            from server.policy.jwt_auth import JwtVerifier  # PyJWT only when configured

            self._jwt = JwtVerifier(config.auth.jwt)
        self._keys = keys

    async def authenticate(self, authorization: str | None) -> Caller:
        """The caller behind an `authorization` header or metadata value."""
        if not authorization and not self._required:
            return ANONYMOUS
        try:
            return await self._caller(authorization)
        except AuthenticationError:
            if self._required:
                raise
            return ANONYMOUS

    async def _caller(self, authorization: str | None) -> Caller:
        if not authorization:
            raise AuthenticationError("missing credentials: send authorization: Bearer <token>")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError("credentials must be sent as authorization: Bearer <token>")
        if self._is_admin_key(token):
            return Caller(user="admin", tier=DEFAULT_TIER, kind="admin")
        key_id = key_id_of(token)
        if key_id is not None and self._keys is not None:
            return await self._api_key_caller(key_id, token)
        if self._jwt is None:
            raise AuthenticationError("invalid credentials")
        claims = self._jwt.claims(token)
        tier = claims.get(self._jwt.tier_claim) or DEFAULT_TIER
        if not isinstance(tier, str) or tier not in self._tiers:
            raise PermissionDeniedError(f"tier {echoed(repr(tier))} does not exist")
        return Caller(user=claims["sub"], tier=tier)

    async def _api_key_caller(self, key_id: str, token: str) -> Caller:
        assert self._keys is not None
        record = await self._keys.lookup(key_id)
        if record is None or not record.matches(token):
            raise AuthenticationError("invalid API key")
        if record.revoked:
            raise PermissionDeniedError("this API key has been revoked")
        if record.expires_at is not None and record.expired(time.time()):  # no clock read else
            raise PermissionDeniedError("this API key has expired")
        if record.tier not in self._tiers:
            raise PermissionDeniedError(f"tier {echoed(record.tier)!r} does not exist")
        return Caller(
            user=record.user, tier=record.tier, key_id=record.id, key=self._narrowing(record)
        )

    def _narrowing(self, record: ApiKey) -> KeyNarrowing | None:
        """What `record` narrows of its tier (None: nothing), made once per record."""
        known = self._narrowings.get(record.id)
        if known is not None and known[0] is record:
            return known[1]
        narrowing = None
        if (
            record.models is not None
            or record.requests_per_minute is not None
            or record.tokens_per_minute is not None
            or record.max_concurrent_requests is not None
            or record.budget_nanos is not None
        ):
            narrowing = KeyNarrowing(
                models=None if record.models is None else frozenset(record.models),
                requests_per_minute=record.requests_per_minute,
                tokens_per_minute=record.tokens_per_minute,
                max_concurrent_requests=record.max_concurrent_requests,
                budget_nanos=record.budget_nanos,
                budget_period=record.budget_period,
            )
        if len(self._narrowings) >= _MAX_NARROWINGS:
            self._narrowings.clear()
        self._narrowings[record.id] = (record, narrowing)
        return narrowing

    def _is_admin_key(self, token: str) -> bool:
        presented = token.encode()
        return any(hmac.compare_digest(presented, key) for key in self._admin_keys)

    def _limits(self, caller: Caller) -> _Limits | None:
        """(requests and tokens per minute, requests in flight) for the caller, or None
        when nothing limits it: the tier's, each narrowed by the caller's key's."""
        tier = self._tiers.get(caller.tier)
        if self._limiter is None or tier is None or caller.admin:
            return None
        rpm, tpm = tier.requests_per_minute, tier.tokens_per_minute
        concurrent = tier.max_concurrent_requests
        key = caller.key
        if key is not None:
            rpm = _tighter(rpm, key.requests_per_minute)
            tpm = _tighter(tpm, key.tokens_per_minute)
            concurrent = _tighter(concurrent, key.max_concurrent_requests)
        if rpm is None and tpm is None and concurrent is None:
            return None
        return rpm, tpm, concurrent

    def _budget_plans(self, caller: Caller) -> list[BudgetPlan] | None:
        """The budgets that apply to the caller, or None (a check, no allocation, for a
        caller without one)."""
        if self._budgets is None or caller.admin:
            return None
        tier = self._tiers.get(caller.tier)
        key = caller.key
        if (key is None or key.budget_nanos is None) and (tier is None or tier.budget is None):
            return None
        return budget_plans(caller, tier, _budget_key(caller))

    async def add_headers(self, ctx: CallContext) -> None:
        """Put the caller's x-ratelimit-* and x-budget-* headers on `ctx` for an answer
        that was not admitted (an error after authentication, before admission) where
        admission left none: they say the limits and budgets as they stand, taking
        nothing."""
        await self._add_budget_headers(ctx)
        limiter, limits = self._limiter, self._limits(ctx.caller)
        if limiter is None or limits is None:
            return
        if any(k.startswith("x-ratelimit-") for k, _ in ctx.response_headers):
            return
        rpm, tpm, _ = limits
        if rpm is None and tpm is None:
            return
        decision = await limiter.peek(_budget_key(ctx.caller), rpm, tpm)
        ctx.trace.add_headers(rate_limit_headers(decision))

    async def _add_budget_headers(self, ctx: CallContext) -> None:
        """The x-budget-* headers of a call that reserved nothing, as its budgets stand
        (`Budgets.states`: no headers when their state cannot be known). A caller without
        a budget costs one check."""
        plans = self._budget_plans(ctx.caller)
        if plans is None or any(k.startswith("x-budget-") for k, _ in ctx.response_headers):
            return
        assert self._budgets is not None
        now_us = time.time_ns() // 1000
        states = await self._budgets.states(scopes_at(plans, now_us))
        if states:
            ctx.trace.add_headers(budget_headers(states, now_us))

    async def admit(
        self,
        ctx: CallContext,
        estimate_tokens: Callable[[], int],
        estimate_cost: Callable[[int], int | None] | None = None,
        *,
        hold_slot: bool = True,
    ) -> Admission:
        """Take a slot, count the request, reserve its estimated tokens, then its
        estimated cost against every budget that applies; or raise RateLimitError
        (PermissionDeniedError: an unpriced model where budgets refuse them).

        Leaves the x-ratelimit-* (and x-budget-*) headers on `ctx` either way.
        `estimate_tokens` (the prompt's, plus n x max_tokens) is called only when a
        token budget applies; a request that could never fit is refused as not worth
        retrying. The slot (with `max_concurrent_requests`, unless not `hold_slot`) is
        taken first: a call refused for it takes nothing from the buckets.
        `estimate_cost(at_us)` (nanos at the prices of the request's arrival `at_us`;
        None: unpriced) is called only when a budget applies; without it (a call that
        generates nothing) no budget is reserved. A refusal gives back what was taken.
        """
        caller = ctx.caller
        plans = None if estimate_cost is None else self._budget_plans(caller)
        admission = await self._admit_rates(ctx, estimate_tokens, hold_slot)
        if plans is None:
            return admission
        assert estimate_cost is not None
        try:
            hold = await self._reserve_budgets(ctx, plans, estimate_cost)
        except BaseException:
            admission.settle(0)
            raise
        if admission is _UNLIMITED:
            return Admission(hold=hold)
        admission.hold = hold
        return admission

    async def _reserve_budgets(
        self, ctx: CallContext, plans: list[BudgetPlan], estimate_cost: Callable[[int], int | None]
    ) -> Hold:
        budgets = self._budgets
        assert budgets is not None
        now_us = time.time_ns() // 1000
        at_us = now_us - round((time.monotonic() - ctx.started) * 1e6)  # the arrival
        nanos = estimate_cost(at_us)
        if nanos is None:
            if self._deny_unpriced:
                raise PermissionDeniedError(
                    f"model {echoed(ctx.trace.model)!r} has no price, and budgets here "
                    "refuse unpriced models",
                    param="model",
                    code="unpriced_model",
                )
            nanos = 0
        scopes = scopes_at(plans, at_us)
        hold_id = new_id()
        reservation = await budgets.reserve(hold_id, scopes, nanos)
        ctx.trace.add_headers(budget_headers(reservation.states, now_us))
        if not reservation.admitted:
            ctx.trace.over_budget()
            raise budget_refusal(reservation.states, nanos, now_us)
        periods = tuple((scope.name, scope.start_us) for scope in scopes)
        return Hold(hold_id, at_us, periods, budgets, near_limit(reservation.states, nanos))

    async def _admit_rates(
        self, ctx: CallContext, estimate_tokens: Callable[[], int], hold_slot: bool
    ) -> Admission:
        """The slot and the token buckets (GCRA) of `admit`."""
        caller = ctx.caller
        limits = self._limits(caller)
        if limits is None or self._limiter is None:
            return _UNLIMITED
        rpm, tpm, concurrent = limits
        key = _budget_key(caller)
        limiter = self._limiter
        slot = None
        if concurrent is not None and hold_slot:
            slot = await limiter.take_slot(key, concurrent)
            if slot is None:
                ctx.trace.limited()
                raise RateLimitError(
                    f"{_whose(caller, concurrent, 'max_concurrent_requests')} allows "
                    f"{concurrent} requests in flight at once",
                    retry_after_s=1.0,
                    code="concurrency_limit_exceeded",
                )
            if rpm is None and tpm is None:
                return Admission(limiter, key, slot=slot)
        try:
            reserved = estimate_tokens() if tpm is not None else 0
            decision = await limiter.acquire(key, rpm, tpm, reserved)
        except BaseException:
            if slot is not None:
                limiter.release_slot(slot)
            raise
        ctx.trace.add_headers(rate_limit_headers(decision))
        if decision.allowed:
            return Admission(limiter, key, tpm, reserved, decision.local, slot)
        if slot is not None:
            limiter.release_slot(slot)
        ctx.trace.limited()
        if not decision.fits_ever:
            raise RateLimitError(
                f"this request needs {reserved} tokens; "
                f"{_whose(caller, tpm, 'tokens_per_minute')} allows {tpm} a minute",
                retry_after_s=decision.retry_after_s,
                should_retry=False,
            )
        raise RateLimitError(
            f"rate limit of {_whose(caller, rpm, 'requests_per_minute')} reached; retry in "
            f"{format_duration(decision.retry_after_s)}",
            retry_after_s=decision.retry_after_s,
        )

    async def admit_request(self, ctx: CallContext) -> None:
        """Count a call that generates nothing (a listing, a usage read): one request,
        no tokens and no slot, so that no door route can be hammered for free; its
        budgets are read, not reserved, for its x-budget-* headers."""
        limits = self._limits(ctx.caller)
        if limits is not None and limits[:2] != (None, None):
            await self.admit(ctx, lambda: 0, hold_slot=False)
        await self._add_budget_headers(ctx)


def _tighter(tier: int | None, key: int | None) -> int | None:
    if key is None:
        return tier
    return key if tier is None else min(tier, key)


def _whose(caller: Caller, limit: int | None, name: str) -> str:
    """Whose limit `limit` is, for a message: the key's own where it is the tighter."""
    key = caller.key
    if key is not None and getattr(key, name) == limit:
        return "this API key"
    return f"tier {caller.tier!r}"


def _budget_key(caller: Caller) -> str:
    """Whose budget: a key's, a JWT subject's, or the anonymous callers' (never confused)."""
    if caller.key_id is not None:
        return f"key:{caller.key_id}"
    return "anonymous" if caller.kind == "anonymous" else f"sub:{caller.user}"


def build_limiter(config: Config, events: LimiterEvents | None = None) -> Limiter | None:
    """The configured rate-limit backend (`none`: no limits at all); `events` hears
    what a shared backend reports (failed calls, kept settlements)."""
    limits = config.rate_limits
    if limits.backend == "none":
        return None
    if limits.backend == "redis":
        assert limits.url is not None
        from server.policy.redis_limiter import RedisLimiter  # redis only when configured

        return RedisLimiter(limits.url, prefix=limits.prefix, events=events)
    return MemoryLimiter(share=1 / config.server.workers)
