"""`UsageService.GetUsage` in the core's terms: who may read what, as protos."""

from __future__ import annotations

from typing import Protocol

from google.protobuf.timestamp_pb2 import Timestamp
from tandem.v1 import usage_pb2

from server.core.context import Caller
from server.core.errors import InvalidRequestError, PermissionDeniedError
from server.usage.record import UsagePage, UsageQuery

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "LedgerReader", "usage_query", "usage_response"]

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


class LedgerReader(Protocol):
    async def query_usage(self, query: UsageQuery) -> UsagePage: ...


def usage_query(request: usage_pb2.GetUsageRequest, caller: Caller) -> UsageQuery:
    """The query a caller may run: its own records, or anyone's for an admin."""
    if request.user and request.user != caller.user and not caller.admin:
        raise PermissionDeniedError("only an admin key may read another user's usage", param="user")
    if not 0 <= request.limit <= MAX_LIMIT:
        raise InvalidRequestError(f"limit must be 1 to {MAX_LIMIT}", param="limit")
    for name in ("since", "until"):
        if request.HasField(name) and not _in_range(getattr(request, name)):
            raise InvalidRequestError(f"{name}: out of range", param=name)
    return UsageQuery(
        user=request.user or (None if caller.admin else caller.user),
        model=request.model or None,
        since=request.since.ToMicroseconds() if request.HasField("since") else None,
        until=request.until.ToMicroseconds() if request.HasField("until") else None,
        limit=request.limit or DEFAULT_LIMIT,
    )


def _in_range(timestamp: Timestamp) -> bool:
    # what Timestamp itself allows (years 1 to 9999); PostgreSQL and datetime go no further
    return (
        -62_135_596_800 <= timestamp.seconds <= 253_402_300_799
        and 0 <= timestamp.nanos <= 999_999_999
    )


def usage_response(page: UsagePage) -> usage_pb2.GetUsageResponse:
    response = usage_pb2.GetUsageResponse()
    for record in page.records:
        out = response.records.add(
            request_id=record.request_id,
            user=record.user,
            model=record.model,
            provider=record.provider,
            protocol=record.protocol,
            prompt_tokens=record.prompt_tokens,
            completion_tokens=record.completion_tokens,
            total_tokens=record.prompt_tokens + record.completion_tokens,
            status=record.status,
            latency_ms=record.latency_ms,
        )
        if record.ttft_ms is not None:
            out.ttft_ms = record.ttft_ms
        out.created_at.FromMicroseconds(record.created_at)
    totals = page.totals
    response.totals.requests = totals.requests
    response.totals.prompt_tokens = totals.prompt_tokens
    response.totals.completion_tokens = totals.completion_tokens
    response.totals.total_tokens = totals.total_tokens
    return response
