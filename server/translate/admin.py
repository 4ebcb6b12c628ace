"""The admin API's HTTP spelling: a key's JSON to the `Key` message (with the fields it
names: PATCH's update mask) and back, query parameters to requests, and spend as
JSON. Money is an exact JSON number on HTTP (`orjson.Fragment` of the decimal's text),
a decimal string in the proto."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC
from decimal import Decimal
from typing import Any

import orjson
from google.protobuf.timestamp_pb2 import Timestamp
from tandem.v1 import admin_pb2

from server.errors import InvalidRequestError, echoed
from server.store.keys import LIMITS, UPDATABLE
from server.translate.usage import _rfc3339 as parse_rfc3339

__all__ = [
    "encode_key",
    "encode_keys",
    "encode_spend",
    "parse_key",
    "parse_list_params",
    "parse_spend_params",
]

_CREATABLE = ("user", "tier", *UPDATABLE)
_INT32_MAX = 2**31 - 1


def parse_key(body: bytes, *, creating: bool) -> tuple[admin_pb2.Key, list[str]]:
    """A key's JSON (a creation's, or a PATCH's) as the `Key` and the fields it names;
    `null` names a field and leaves it unset (PATCH: clears it). Numbers are read as
    decimals, so a budget keeps every digit it was sent with."""
    try:
        value = json.loads(body, parse_float=Decimal)
    except (ValueError, RecursionError):
        raise InvalidRequestError("body: is not valid JSON", param="body") from None
    if not isinstance(value, dict):
        raise InvalidRequestError("body: expected a JSON object", param="body")
    allowed = _CREATABLE if creating else UPDATABLE
    key = admin_pb2.Key()
    for name, field in value.items():
        _string("body", name)  # a field's name echoes in the error: UTF-8 only
        if name not in allowed:
            known = name in ("id", "created_at", "revoked", "key", "user", "tier")
            why = "cannot be set" if known else "unknown field"
            raise InvalidRequestError(f"{echoed(name)}: {why}", param=echoed(name))
        if field is not None:
            _set(key, name, field)
    return key, list(value)


def _set(key: admin_pb2.Key, name: str, value: Any) -> None:
    if name in ("user", "tier"):
        key_text = _string(name, value)
        setattr(key, name, key_text)
    elif name == "models":
        if not isinstance(value, list):
            raise InvalidRequestError("models: expected a list of model names", param="models")
        key.models.SetInParent()
        key.models.names.extend(_string("models", item) for item in value)
    elif name in LIMITS:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= _INT32_MAX:
            raise InvalidRequestError(f"{name}: expected an integer 1 to {_INT32_MAX}", param=name)
        setattr(key, name, value)
    elif name == "budget":
        _set_budget(key, value)
    elif name == "expires_at":
        _time_field(key.expires_at, "expires_at", value)
    else:  # labels
        if not isinstance(value, dict):
            raise InvalidRequestError("labels: expected an object of strings", param="labels")
        for label, text in value.items():  # the name too: a proto map's key is UTF-8
            key.labels[_string("labels", label)] = _string(f"labels.{label}", text)


def _set_budget(key: admin_pb2.Key, value: Any) -> None:
    if not isinstance(value, dict) or "usd" not in value:
        raise InvalidRequestError(
            'budget: expected {"usd": number, "period": "monthly"}', param="budget"
        )
    for name in value:
        _string("budget", name)  # echoed in the error: UTF-8 only
        if name not in ("usd", "period"):
            raise InvalidRequestError(f"budget.{echoed(name)}: unknown field", param="budget")
    usd = value["usd"]  # a JSON number (the contract's money on HTTP), never a string
    if isinstance(usd, bool) or not isinstance(usd, int | Decimal):
        raise InvalidRequestError("budget.usd: expected a number", param="budget.usd")
    key.budget.usd = str(usd)
    if value.get("period") is not None:
        key.budget.period = _string("budget.period", value["period"])


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidRequestError(f"{name}: expected a string", param=name)
    try:
        value.encode()  # a proto string is UTF-8: no lone surrogate
    except UnicodeEncodeError:
        raise InvalidRequestError(f"{name}: not valid UTF-8", param=name) from None
    return value


def _time_field(out: Timestamp, name: str, value: Any) -> None:
    try:
        out.FromDatetime(parse_rfc3339(name, _string(name, value)).astimezone(UTC))
    except (OverflowError, ValueError):
        raise InvalidRequestError(f"{name}: out of range", param=name) from None


def _time(timestamp: Timestamp) -> str:
    moment = timestamp.ToDatetime(tzinfo=UTC)
    return moment.isoformat(timespec="microseconds").removesuffix("+00:00") + "Z"


def usd(text: str) -> orjson.Fragment:
    """A decimal string as the exact JSON number it is."""
    return orjson.Fragment(text)


def encode_key(key: admin_pb2.Key) -> dict[str, Any]:
    """The contract's key: an absent limit is null; `key` only in a creation's answer."""
    out: dict[str, Any] = {
        "id": key.id,
        "user": key.user,
        "tier": key.tier,
        "models": list(key.models.names) if key.HasField("models") else None,
        "requests_per_minute": (
            key.requests_per_minute if key.HasField("requests_per_minute") else None
        ),
        "tokens_per_minute": key.tokens_per_minute if key.HasField("tokens_per_minute") else None,
        "max_concurrent_requests": (
            key.max_concurrent_requests if key.HasField("max_concurrent_requests") else None
        ),
        "budget": (
            {"usd": usd(key.budget.usd), "period": key.budget.period}
            if key.HasField("budget")
            else None
        ),
        "expires_at": _time(key.expires_at) if key.HasField("expires_at") else None,
        "labels": dict(sorted(key.labels.items())),
        "created_at": _time(key.created_at),
        "revoked": key.revoked,
    }
    if key.key:
        out["key"] = key.key
    return out


def encode_keys(response: admin_pb2.ListKeysResponse) -> dict[str, Any]:
    return {
        "keys": [encode_key(key) for key in response.keys],
        "next_page_token": response.next_page_token or None,
    }


def _strict(params: Mapping[str, str], known: tuple[str, ...]) -> None:
    for name in params:
        if name not in known:
            raise InvalidRequestError(f"{echoed(name)}: unknown parameter", param=echoed(name))


def parse_list_params(params: Mapping[str, str]) -> admin_pb2.ListKeysRequest:
    """`?user=&tier=&page_size=&page_token=`; an unknown or bad one is a 400."""
    _strict(params, ("user", "tier", "page_size", "page_token"))
    request = admin_pb2.ListKeysRequest(
        user=params.get("user", ""),
        tier=params.get("tier", ""),
        page_token=params.get("page_token", ""),
    )
    if (size := params.get("page_size")) is not None:
        if not (size.isascii() and size.isdigit() and len(size) <= 4) or not 1 <= int(size) <= 1000:
            raise InvalidRequestError("page_size: 1 to 1000", param="page_size")
        request.page_size = int(size)
    return request


def parse_spend_params(params: Mapping[str, str]) -> admin_pb2.GetSpendRequest:
    """`?user=&key_id=&model=&since=&until=&group_by=`; an unknown or bad one is a 400."""
    _strict(params, ("user", "key_id", "model", "since", "until", "group_by"))
    request = admin_pb2.GetSpendRequest(
        user=params.get("user", ""),
        key_id=params.get("key_id", ""),
        model=params.get("model", ""),
        group_by=params.get("group_by", ""),
    )
    for name in ("since", "until"):
        if text := params.get(name):
            _time_field(getattr(request, name), name, text)
    return request


def _group(group: admin_pb2.SpendGroup, named: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"group": group.group} if named else {}
    out |= {
        "requests": group.requests,
        "prompt_tokens": group.prompt_tokens,
        "completion_tokens": group.completion_tokens,
        "total_tokens": group.total_tokens,
        "cost_nanos": group.cost_nanos,
        "cost_usd": usd(group.cost_usd),
    }
    return out


def encode_spend(response: admin_pb2.GetSpendResponse) -> dict[str, Any]:
    return {
        "groups": [_group(group, named=True) for group in response.groups],
        "totals": _group(response.totals, named=False),
    }
