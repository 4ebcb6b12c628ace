"""`UsageService.GetUsage` in the core's terms: who may read what, as protos."""

from __future__ import annotations

from typing import Any, Protocol

from google.protobuf.timestamp_pb2 import Timestamp
from tandem.v1 import usage_pb2

from server.context import Caller
from server.errors import InvalidRequestError, PermissionDeniedError
from server.usage.record import UsagePage, UsageQuery, UsageRecord

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "LedgerReader",
    "check_storable",
    "usage_query",
    "usage_response",
]

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


class LedgerReader(Protocol):
    async def query_usage(self, query: UsageQuery) -> UsagePage: ...


def usage_query(request: usage_pb2.GetUsageRequest, caller: Caller) -> UsageQuery:
    """The query a caller may run: its own records (same name and kind of caller),
    or anyone's for an admin."""
    check_storable("user", request.user)
    check_storable("model", request.model)
    if request.user and request.user != caller.user and not caller.admin:
        raise PermissionDeniedError("only an admin key may read another user's usage", param="user")
    if not 0 <= request.limit <= MAX_LIMIT:
        raise InvalidRequestError(f"limit must be 1 to {MAX_LIMIT}", param="limit")
    for name in ("since", "until"):
        if request.HasField(name) and not _in_range(getattr(request, name)):
            raise InvalidRequestError(
                f"{name}: out of range (years 1 to 9999, nanos 0 to 999999999)", param=name
            )
    mine = not caller.admin
    return UsageQuery(
        user=caller.user if mine else (request.user or None),
        caller_kind=caller.kind if mine else None,  # `sub: admin` is not the admin key
        model=request.model or None,
        since=request.since.ToMicroseconds() if request.HasField("since") else None,
        until=request.until.ToMicroseconds() if request.HasField("until") else None,
        limit=request.limit or DEFAULT_LIMIT,
    )


def check_storable(name: str, text: str) -> None:
    """Refuse (400) a filter no store can compare: PostgreSQL text holds no NUL,
    and a lone surrogate is not UTF-8 (nor a proto string)."""
    if "\x00" in text or not (text.isascii() or _is_utf8(text)):
        raise InvalidRequestError(f"{name}: must not contain NUL or lone surrogates", param=name)


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _in_range(timestamp: Timestamp) -> bool:
    # what Timestamp itself allows (years 1 to 9999, nanos below a second); PostgreSQL and
    # datetime go no further, and ToMicroseconds raises on nanos out of range
    return (
        -62_135_596_800 <= timestamp.seconds <= 253_402_300_799
        and 0 <= timestamp.nanos < 1_000_000_000
    )


# what a record and its proto both hold, alike; the times are converted below
_COPIED = tuple(
    name
    for name in UsageRecord._fields
    if name in usage_pb2.UsageRecord.DESCRIPTOR.fields_by_name
    and name not in ("ttft_ms", "created_at")
)


def usage_response(page: UsagePage) -> usage_pb2.GetUsageResponse:
    response = usage_pb2.GetUsageResponse()
    for record in page.records:
        fields: dict[str, Any] = {name: getattr(record, name) for name in _COPIED}
        out = response.records.add(
            total_tokens=record.prompt_tokens + record.completion_tokens, **fields
        )
        if record.ttft_ms is not None:
            out.ttft_ms = record.ttft_ms
        out.created_at.FromMicroseconds(record.created_at)
    totals = page.totals
    response.totals.requests = totals.requests
    response.totals.prompt_tokens = totals.prompt_tokens
    response.totals.completion_tokens = totals.completion_tokens
    response.totals.total_tokens = totals.total_tokens
    response.totals.cost_nanos = totals.cost_nanos
    return response
