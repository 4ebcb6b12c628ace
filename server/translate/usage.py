"""The usage API's HTTP spelling: query parameters in, JSON with RFC 3339 times out."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from tandem.v1 import usage_pb2

from server.errors import InvalidRequestError
from server.usage.api import DEFAULT_LIMIT, MAX_LIMIT, check_storable
from server.usage.money import usd_json
from server.usage.record import datetime_of

__all__ = ["encode_usage", "parse_usage_params"]

_PARAMS = ("since", "until", "user", "model", "limit")
# RFC 3339 date-time; the offset may be left out (UTC)
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})?")


def parse_usage_params(params: Mapping[str, str]) -> usage_pb2.GetUsageRequest:
    """`?since=&until=&user=&model=&limit=`, strictly: an unknown or bad one is a 400."""
    for name in params:
        if name not in _PARAMS:
            raise InvalidRequestError(f"{name}: unknown parameter", param=name)
    for name in ("user", "model"):  # before they become proto strings, which must be UTF-8
        check_storable(name, params.get(name, ""))
    request = usage_pb2.GetUsageRequest(
        user=params.get("user", ""), model=params.get("model", ""), limit=DEFAULT_LIMIT
    )
    for name in ("since", "until"):
        if text := params.get(name):
            try:
                getattr(request, name).FromDatetime(_rfc3339(name, text))
            except (OverflowError, ValueError):
                raise InvalidRequestError(f"{name}: out of range", param=name) from None
    if (limit := params.get("limit")) is not None:
        if not (limit.isascii() and limit.isdigit()) or not 1 <= int(limit) <= MAX_LIMIT:
            raise InvalidRequestError(f"limit must be 1 to {MAX_LIMIT}", param="limit")
        request.limit = int(limit)
    return request


def _rfc3339(name: str, text: str) -> datetime:
    moment = None
    if _RFC3339.fullmatch(text):
        # Python 3.11 parses at most 6 fractional digits: nanoseconds are cut to micro
        whole, dot, rest = text.partition(".")
        if dot:
            digits = len(rest) - len(rest.lstrip("0123456789"))
            text = f"{whole}.{rest[: min(digits, 6)].ljust(6, '0')}{rest[digits:]}"
        try:
            moment = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
        except ValueError:
            moment = None
    if moment is None:
        raise InvalidRequestError(
            f"{name}: expected an RFC 3339 time such as 2026-01-31T12:00:00Z", param=name
        )
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _time(microseconds: int) -> str:
    return datetime_of(microseconds).isoformat(timespec="microseconds").removesuffix("+00:00") + "Z"


def encode_usage(response: usage_pb2.GetUsageResponse) -> dict[str, Any]:
    """The usage API's JSON (for orjson: `cost_usd` is an exact number, a Fragment)."""
    totals = response.totals
    return {
        "records": [
            {
                "request_id": record.request_id,
                "user": record.user,
                "model": record.model,
                "provider": record.provider,
                "protocol": record.protocol,
                "prompt_tokens": record.prompt_tokens,
                "completion_tokens": record.completion_tokens,
                "total_tokens": record.total_tokens,
                "status": record.status,
                "latency_ms": record.latency_ms,
                "ttft_ms": record.ttft_ms if record.HasField("ttft_ms") else None,
                "created_at": _time(record.created_at.ToMicroseconds()),
                "usage_source": record.usage_source,
                "cached_tokens": record.cached_tokens,
                "reasoning_tokens": record.reasoning_tokens,
                "cache_write_tokens": record.cache_write_tokens,
                "cost_nanos": record.cost_nanos,
                "cost_usd": usd_json(record.cost_nanos),
                "cost_source": record.cost_source,
            }
            for record in response.records
        ],
        "totals": {
            "requests": totals.requests,
            "prompt_tokens": totals.prompt_tokens,
            "completion_tokens": totals.completion_tokens,
            "total_tokens": totals.total_tokens,
            "cost_nanos": totals.cost_nanos,
            "cost_usd": usd_json(totals.cost_nanos),
        },
    }
