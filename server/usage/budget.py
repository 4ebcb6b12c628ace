"""What budgets are made of, shared by the policy that reserves, the store that keeps
them and the ledger that settles them: scopes, periods, reservations, settlements.

A scope is one budget over one kind of period: a key's own (`key:<id>:<period>`) or a
tier's for one caller (`tier:<tier>:<caller>:<period>`, `<caller>` as rate limits
count callers: `key:<id>`, `sub:<user>` or `anonymous`). The period's kind is in the
name because a daily and a monthly period may start at the same instant. A period is
its scope's calendar window in UTC, named by its start (epoch microseconds; `total`:
0); a new period is a new row, so it starts clean at its boundary with no reset job.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from server.config import Period
from server.usage.record import datetime_of, microseconds_of

__all__ = [
    "BudgetScope",
    "LedgerFilter",
    "Reservation",
    "ScopeState",
    "Settlement",
    "period_bounds",
]


class LedgerFilter(NamedTuple):
    """Which ledger records count toward a scope (how a new period's row learns what
    was spent before it was made): a key's, or one caller's of one tier."""

    key_id: str | None = None
    tier: str | None = None  # a tier scope: records of this tier, and of the caller below
    user: str | None = None  # with caller_kind "user" (a JWT subject)
    # "user" or "anonymous", for a tier scope without a key: only records made without
    # one count (a key made for user U records caller_kind "user" too, and is not U's JWT)
    caller_kind: str | None = None


class BudgetScope(NamedTuple):
    name: str
    period: Period
    start_us: int  # the period's start (inclusive)
    end_us: int | None  # its end (exclusive); None for `total`
    limit_nanos: int  # passed with every reservation: an admin's change applies at once
    ledger: LedgerFilter


class ScopeState(NamedTuple):
    """A scope as a reservation found it (this reservation included when admitted)."""

    scope: BudgetScope
    spent_nanos: int
    reserved_nanos: int

    @property
    def remaining_nanos(self) -> int:
        return self.scope.limit_nanos - self.spent_nanos - self.reserved_nanos


class Reservation(NamedTuple):
    """All or nothing: admitted into every scope, or into none."""

    admitted: bool
    states: tuple[ScopeState, ...]


class Settlement(NamedTuple):
    """What a ledger record settles: its hold (the hold's id is the record's id) freed
    from, and its cost added to, each of its scopes' periods."""

    record_id: str
    cost_nanos: int
    periods: tuple[tuple[str, int], ...]  # (scope name, period start in epoch µs)


def period_bounds(period: Period, at_us: int) -> tuple[int, int | None]:
    """The UTC period of kind `period` holding the moment `at_us`: (start, end) in
    epoch microseconds, end exclusive; `total` is (0, None)."""
    if period == "total":
        return 0, None
    at = datetime_of(at_us)
    day = datetime(at.year, at.month, at.day, tzinfo=UTC)
    if period == "daily":
        start, end = day, day + timedelta(days=1)
    elif period == "weekly":
        start = day - timedelta(days=day.weekday())  # Monday
        end = start + timedelta(days=7)
    else:
        start = day.replace(day=1)
        end = (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else (start.replace(month=start.month + 1))
        )
    return microseconds_of(start), microseconds_of(end)
