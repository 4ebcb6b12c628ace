"""A key's fields between the admin API's `Key` message and the stored `ApiKey`: checked
once here (every bad value a 400 naming its field), for both doors and the CLI.

Field names in errors are the `Key`'s own (`budget.usd`, `labels`), as HTTP's body
and gRPC's `key` both spell them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable
from decimal import Decimal, InvalidOperation
from typing import Any, cast, get_args

from google.protobuf.timestamp_pb2 import Timestamp
from tandem.v1 import admin_pb2

from server.config import MAX_BUDGET_USD, Config, Period, whole_nanos
from server.errors import InvalidRequestError, NotFoundError, echoed
from server.store import ApiKey
from server.store.keys import LIMITS
from server.usage.money import nanos_text

__all__ = [
    "MAX_LABELS",
    "allowed_models",
    "check_text",
    "given",
    "in_range",
    "key_message",
    "key_not_found",
    "narrowing",
]

MAX_LABELS = 16
MAX_LABEL_KEY = 63
MAX_LABEL_VALUE = 256
MAX_NAME = 256
# what PostgreSQL, datetime and a Timestamp can all hold: years 1 to 9999
MIN_TIME_S = -62_135_596_800  # 0001-01-01T00:00:00Z
MAX_TIME_S = 253_402_300_799  # 9999-12-31T23:59:59Z
_PERIODS: tuple[str, ...] = get_args(Period)
_LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")


def check_text(name: str, text: str, *, required: bool = False, limit: int = MAX_NAME) -> str:
    """`text` if a store can keep and compare it: printable, at most `limit` characters
    (PostgreSQL text holds no NUL, and a lone surrogate is not UTF-8)."""
    if required and not text:
        raise InvalidRequestError(f"{name}: required", param=name)
    if len(text) > limit or not text.isprintable() or not _utf8(text):
        raise InvalidRequestError(
            f"{name}: expected printable text of at most {limit} characters", param=name
        )
    return text


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def in_range(name: str, timestamp: Timestamp) -> int:
    """The timestamp in epoch microseconds, if PostgreSQL and datetime can hold it."""
    if not (MIN_TIME_S <= timestamp.seconds <= MAX_TIME_S and 0 <= timestamp.nanos < 1_000_000_000):
        raise InvalidRequestError(
            f"{name}: out of range (years 1 to 9999, nanos 0 to 999999999)", param=name
        )
    return timestamp.ToMicroseconds()


def allowed_models(config: Config, tier: str) -> Collection[str]:
    """The models a key of `tier` may narrow to: its tier's (all, for a tier that names none)."""
    found = config.tiers.get(tier)
    if found is None:  # a key of a tier since taken out of the config
        raise InvalidRequestError(
            f"models: the key's tier {echoed(tier)!r} is not in the config", param="models"
        )
    names = found.models
    return names if names is not None else [model.name for model in config.models]


def _nanos(text: str) -> int:
    """Dollars as nano-dollars, exactly, or a 400: never rounded (the decimal context
    would turn 1e-2000000000 into 0), never `1_0` or fullwidth digits (Decimal takes both)."""
    try:
        usd = Decimal(text) if text.isascii() and "_" not in text else Decimal("NaN")
    except InvalidOperation:
        usd = Decimal("NaN")
    if not usd.is_finite() or text.strip() != text:
        raise InvalidRequestError("budget.usd: expected a decimal number", param="budget.usd")
    if usd < 0:
        raise InvalidRequestError("budget.usd: must be 0 or more", param="budget.usd")
    if usd > MAX_BUDGET_USD:  # before any arithmetic: 1e999999 would overflow the context
        raise InvalidRequestError("budget.usd: too large", param="budget.usd")
    try:
        return whole_nanos(usd)  # at most MAX_BUDGET_NANOS: checked above
    except ValueError as exc:
        raise InvalidRequestError(f"budget.usd: {exc}", param="budget.usd") from None


def _labels(labels: dict[str, str]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise InvalidRequestError(f"labels: at most {MAX_LABELS}", param="labels")
    for name, value in labels.items():
        if not _LABEL_KEY.fullmatch(name) or len(name) > MAX_LABEL_KEY:
            raise InvalidRequestError(
                f"labels: key {echoed(name)!r}: expected 1 to {MAX_LABEL_KEY} of "
                "[A-Za-z0-9._/-], starting with a letter or digit",
                param="labels",
            )
        check_text(f"labels.{name}", value, limit=MAX_LABEL_VALUE)
    return dict(sorted(labels.items()))


def given(key: admin_pb2.Key, path: str) -> bool:
    """Whether `key` sets the field `path` of UPDATABLE (labels: any label)."""
    return bool(key.labels) if path == "labels" else key.HasField(cast(Any, path))


def narrowing(
    key: admin_pb2.Key, paths: Iterable[str], config: Config, tier: str, now: float
) -> dict[str, Any]:
    """The `ApiKey` fields that the `paths` of `key` set (a path left unset clears its
    field), checked against the key's `tier`."""
    fields: dict[str, Any] = {}
    for path in paths:
        if path == "models":
            fields["models"] = _models(key, config, tier) if key.HasField("models") else None
        elif path in LIMITS:
            value = getattr(key, path) if given(key, path) else None
            if value is not None and value < 1:
                raise InvalidRequestError(f"{path}: must be 1 or more", param=path)
            fields[path] = value
        elif path == "budget":
            budget = key.budget if key.HasField("budget") else None
            period = (budget.period or "monthly") if budget is not None else None
            if period is not None and period not in _PERIODS:
                raise InvalidRequestError(
                    f"budget.period: expected one of {', '.join(_PERIODS)}", param="budget.period"
                )
            fields["budget_nanos"] = None if budget is None else _nanos(budget.usd)
            fields["budget_period"] = period
        elif path == "expires_at":
            expires = None
            if key.HasField("expires_at"):
                at_us = in_range("expires_at", key.expires_at)
                if (key.expires_at.seconds, key.expires_at.nanos) > (MAX_TIME_S, 0):
                    raise InvalidRequestError(
                        "expires_at: at most 9999-12-31T23:59:59Z", param="expires_at"
                    )
                expires = at_us / 1_000_000
                if expires <= now:
                    raise InvalidRequestError(
                        "expires_at: must be in the future", param="expires_at"
                    )
            fields["expires_at"] = expires
        elif path == "labels":
            fields["labels"] = _labels(dict(key.labels))
        else:
            raise InvalidRequestError(
                f"update_mask: {echoed(path)!r} cannot be changed", param="update_mask"
            )
    return fields


def _models(key: admin_pb2.Key, config: Config, tier: str) -> tuple[str, ...]:
    allowed = allowed_models(config, tier)
    names: list[str] = []
    for name in key.models.names:
        if name not in allowed:
            raise InvalidRequestError(
                f"models: {echoed(name)!r} is not a model of tier {tier!r}", param="models"
            )
        if name not in names:
            names.append(name)
    return tuple(names)


def key_message(key: ApiKey, secret: str = "") -> admin_pb2.Key:
    """The stored key as the API shows it: never its hash; the secret only when made."""
    out = admin_pb2.Key(
        id=key.id, user=key.user, tier=key.tier, labels=key.labels, revoked=key.revoked, key=secret
    )
    if key.models is not None:
        out.models.SetInParent()  # an empty list is still a list: no model at all
        out.models.names.extend(key.models)
    for name in LIMITS:
        if (value := getattr(key, name)) is not None:
            setattr(out, name, value)
    if key.budget_nanos is not None:
        out.budget.usd = nanos_text(key.budget_nanos)
        out.budget.period = key.budget_period or "monthly"
    if key.expires_at is not None:
        out.expires_at.FromMicroseconds(_clamped_us(key.expires_at))
    out.created_at.FromMicroseconds(_clamped_us(key.created_at))
    return out


def _clamped_us(seconds: float) -> int:
    """A stored time as epoch microseconds a Timestamp (and datetime) can hold: a row
    from before the input was bounded, or written by hand, never fails a listing."""
    if not math.isfinite(seconds):
        return MIN_TIME_S * 1_000_000 if seconds < 0 else MAX_TIME_S * 1_000_000
    micros = round(seconds * 1_000_000)
    return min(max(micros, MIN_TIME_S * 1_000_000), MAX_TIME_S * 1_000_000 + 999_999)


def key_not_found(key_id: str) -> NotFoundError:
    return NotFoundError(f"no key {echoed(key_id)!r}", param="id", code="key_not_found")
