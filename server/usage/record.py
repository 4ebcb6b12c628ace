"""What the ledger holds: one record per request that reached a provider."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

__all__ = [
    "UsagePage",
    "UsageQuery",
    "UsageRecord",
    "UsageTotals",
    "datetime_of",
    "microseconds_of",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class UsageRecord(NamedTuple):
    """What one call cost. A NamedTuple: immutable and made for every request
    (a frozen dataclass cost 3 us to build here, this 0.6 us).

    `id` is the ledger's own key, unique per request: writing a batch twice
    stores it once, and two requests sharing an `x-request-id` are two records.
    `created_at` is whole microseconds since the epoch (exact in both stores, so
    a record's own time used as `since` finds it); latencies are milliseconds.
    """

    id: str
    request_id: str
    user: str
    model: str
    provider: str
    protocol: str
    prompt_tokens: int
    completion_tokens: int
    status: str
    latency_ms: float
    ttft_ms: float | None
    created_at: int
    usage_source: str = "upstream"  # or "estimated": the gateway's estimate, not the upstream's
    caller_kind: str = "user"  # or "admin", "anonymous": who `user` names (see CallerKind)
    cached_tokens: int = 0  # of the prompt's, read from the provider's cache
    reasoning_tokens: int = 0  # of the completion's, spent reasoning
    cache_write_tokens: int = 0  # of the prompt's, written to the provider's cache
    cost_nanos: int = 0  # what it cost, in billionths of a US dollar (rounded half up)
    cost_source: str = "unpriced"  # or "priced": the model had a price
    key_id: str | None = None  # the API key that called, for key budgets and spend reports
    tier: str = ""  # the caller's tier, for tier budgets ("" in records from before money)


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """Which records to read: `since` inclusive, `until` exclusive (microseconds
    since the epoch), newest first."""

    user: str | None = None
    caller_kind: str | None = None  # with `user`: only that kind of caller's records
    model: str | None = None
    since: int | None = None
    until: int | None = None
    limit: int = 100


class UsageTotals(NamedTuple):
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_nanos: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class UsagePage:
    """One page of records, and the totals of every record the query matches."""

    records: list[UsageRecord]
    totals: UsageTotals


def datetime_of(microseconds: int) -> datetime:
    """The UTC moment `microseconds` after the epoch, exactly."""
    return _EPOCH + timedelta(microseconds=microseconds)


def microseconds_of(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND
