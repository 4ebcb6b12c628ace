"""The usage API's HTTP spelling: query parameters in, JSON with RFC 3339 times out."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from tandem.v1 import usage_pb2

from server.core.errors import InvalidRequestError
from server.usage.api import DEFAULT_LIMIT

__all__ = ["encode_usage", "parse_usage_params"]

_PARAMS = ("since", "until", "user", "model", "limit")


def parse_usage_params(params: Mapping[str, str]) -> usage_pb2.GetUsageRequest:
    """`?since=&until=&user=&model=&limit=`, strictly: an unknown or bad one is a 400."""
    for name in params:
        if name not in _PARAMS:
            raise InvalidRequestError(f"{name}: unknown parameter", param=name)
    request = usage_pb2.GetUsageRequest(
        user=params.get("user", ""), model=params.get("model", ""), limit=DEFAULT_LIMIT
    )
    for name in ("since", "until"):
        if text := params.get(name):
            getattr(request, name).FromDatetime(_rfc3339(name, text))
    if (limit := params.get("limit")) is not None:
        if not (limit.isascii() and limit.isdigit()) or not 1 <= int(limit) <= 1000:
            raise InvalidRequestError("limit: must be an integer from 1 to 1000", param="limit")
        request.limit = int(limit)
    return request


def _rfc3339(name: str, text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequestError(
            f"{name}: expected an RFC 3339 time such as 2026-01-31T12:00:00Z", param=name
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def encode_usage(response: usage_pb2.GetUsageResponse) -> dict[str, Any]:
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
                "created_at": _time(record.created_at.seconds + record.created_at.nanos / 1e9),
            }
            for record in response.records
        ],
        "totals": {
            "requests": totals.requests,
            "prompt_tokens": totals.prompt_tokens,
            "completion_tokens": totals.completion_tokens,
            "total_tokens": totals.total_tokens,
        },
    }
