"""Budgets at admission: which budgets apply to a caller, as scopes of the period a
request arrived in, and what the answer says of them (`x-budget-*`, the refusal).

The state behind them is `Budgets`' (server/policy/budgets.py, over the usage store);
this module only names and reads it. Scope names are `key:<id>:<period>` (a key's
own) and `tier:<tier>:<caller>:<period>` (the tier's, per caller: `key:<id>`,
`sub:<user>` or `anonymous`, as rate limits count callers), server/usage/budget.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

from server.config import Period
from server.context import Caller
from server.errors import RateLimitError
from server.policy.headers import format_duration
from server.usage.budget import BudgetScope, LedgerFilter, Reservation, ScopeState, period_bounds
from server.usage.money import nanos_text

if TYPE_CHECKING:
    from server.config import TierConfig

__all__ = [
    "BudgetKeeper",
    "BudgetPlan",
    "Hold",
    "budget_headers",
    "budget_plans",
    "budget_refusal",
    "near_limit",
    "scopes_at",
]


class BudgetKeeper(Protocol):
    """What admission needs of `Budgets` (server/policy/budgets.py)."""

    async def reserve(
        self, hold_id: str, scopes: Sequence[BudgetScope], nanos: int
    ) -> Reservation: ...

    async def states(self, scopes: Sequence[BudgetScope]) -> tuple[ScopeState, ...] | None: ...

    def release(self, hold_id: str) -> None: ...

    def cancel(self, hold_id: str, periods: Sequence[tuple[str, int]]) -> None: ...


class BudgetPlan(NamedTuple):
    """One budget that applies to a caller, before a request names its period."""

    name: str  # the scope's name, its period's kind included
    period: Period
    limit_nanos: int
    ledger: LedgerFilter


class Hold(NamedTuple):
    """A granted call's budget reservation: its id is the usage record's, `at_us` the
    request's arrival (its periods' moment and its record's `created_at`)."""

    id: str
    at_us: int
    periods: tuple[tuple[str, int], ...]  # (scope name, period start)
    keeper: BudgetKeeper
    # near its limit, the call waits for its settlement before its answer ends (see
    # `near_limit`); elsewhere its record is written with the next batch
    settle_before_end: bool = True


# how many more reservations like this one a budget must have left for the call's
# answer not to wait for its settlement
NEAR_LIMIT_CALLS = 8


def near_limit(states: Sequence[ScopeState], nanos: int) -> bool:
    """Whether a call's unsettled reservation could refuse its caller's next request:
    the budget with the least left has room for fewer than NEAR_LIMIT_CALLS more like it,
    or less than a tenth of its limit. Only then does the answer wait for its record to
    be written (the reservation settled to the cost), so that a caller near its limit
    is never refused for a reservation it no longer holds; far from it, waiting would
    only cost every call a write of its own instead of its share of a batch."""
    state = _tightest(states)
    remaining = state.remaining_nanos
    return remaining < NEAR_LIMIT_CALLS * nanos or remaining * 10 < state.scope.limit_nanos


def budget_plans(caller: Caller, tier: TierConfig | None, counted_as: str) -> list[BudgetPlan]:
    """The budgets that apply to `caller` (none for an admin): its key's own, and its
    tier's for it alone (`counted_as`: whose, as rate limits count callers)."""
    plans: list[BudgetPlan] = []
    key = caller.key
    if key is not None and key.budget_nanos is not None:
        period: Period = key.budget_period or "monthly"  # type: ignore[assignment]
        plans.append(
            BudgetPlan(
                f"key:{caller.key_id}:{period}",
                period,
                key.budget_nanos,
                LedgerFilter(key_id=caller.key_id),
            )
        )
    budget = tier.budget if tier is not None else None
    if budget is not None:
        if caller.key_id is not None:
            ledger = LedgerFilter(key_id=caller.key_id, tier=caller.tier)
        elif caller.kind == "anonymous":
            ledger = LedgerFilter(tier=caller.tier, caller_kind="anonymous")
        else:
            ledger = LedgerFilter(tier=caller.tier, user=caller.user, caller_kind="user")
        plans.append(
            BudgetPlan(
                f"tier:{caller.tier}:{counted_as}:{budget.period}",
                budget.period,
                budget.nanos,
                ledger,
            )
        )
    return plans


def scopes_at(plans: Sequence[BudgetPlan], at_us: int) -> tuple[BudgetScope, ...]:
    """The plans as scopes of the periods holding the moment `at_us`."""
    scopes = []
    for plan in plans:
        start, end = period_bounds(plan.period, at_us)
        scopes.append(
            BudgetScope(plan.name, plan.period, start, end, plan.limit_nanos, plan.ledger)
        )
    return tuple(scopes)


def _tightest(states: Sequence[ScopeState]) -> ScopeState:
    return min(states, key=lambda state: state.remaining_nanos)


def budget_headers(states: Sequence[ScopeState], now_us: int) -> list[tuple[str, str]]:
    """`x-budget-limit-usd`, `-remaining-usd` and `-reset` (none for `total`) of the
    budget with the least remaining."""
    state = _tightest(states)
    headers = [
        ("x-budget-limit-usd", nanos_text(state.scope.limit_nanos)),
        ("x-budget-remaining-usd", nanos_text(state.remaining_nanos)),
    ]
    end = state.scope.end_us
    if end is not None:
        headers.append(("x-budget-reset", format_duration(max(end - now_us, 0) / 1e6)))
    return headers


def budget_refusal(states: Sequence[ScopeState], nanos: int, now_us: int) -> RateLimitError:
    """The 429 for a reservation of `nanos` that did not fit: retry once every budget
    it did not fit has reset (never, if one of them is a `total`)."""
    full = [s for s in states if s.spent_nanos + s.reserved_nanos + nanos > s.scope.limit_nanos]
    ends = [s.scope.end_us for s in full or states]
    retry_after_s = None if None in ends else max(0, max(e for e in ends if e) - now_us) / 1e6
    scope = _tightest(full or states).scope
    return RateLimitError(
        f"budget of {nanos_text(scope.limit_nanos)} USD ({scope.period}) exhausted: this request "
        f"may cost up to {nanos_text(nanos)} USD",
        retry_after_s=retry_after_s,
        should_retry=False,
        code="budget_exceeded",
    )
