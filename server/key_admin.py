"""`tandem keys` and `tandem spend`: the admin API's handlers (server/core/admin.py), run
by the operator against the store of `usage.store`, as an admin key would over HTTP.
Keys print as the API writes them (server/translate/admin.py)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from google.protobuf.field_mask_pb2 import FieldMask
from tandem.v1 import admin_pb2

from server.config import Config, ConfigError
from server.context import CallContext, Caller, new_id
from server.core.admin import MAX_PAGE_SIZE, KeyAdmin
from server.errors import GatewayError, NotFoundError, UnavailableError
from server.store import open_store
from server.translate.admin import encode_key, encode_spend, parse_spend_params

__all__ = [
    "KeyOptions",
    "create_key",
    "list_keys",
    "parse_duration",
    "revoke_key",
    "spend",
    "update_key",
]

_OPERATOR = Caller(user="admin", tier="free", kind="admin")
_DURATION = re.compile(r"(\d{1,15})([smhdw])")
_LAST_EXPIRY = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)  # as the API allows
_TOO_LATE = "ends after 9999-12-31T23:59:59Z, the latest expiry"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True, slots=True)
class KeyOptions:
    """What `--models`, `--rpm`, ... set on a key (None: not given)."""

    models: tuple[str, ...] | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent_requests: int | None = None
    budget_usd: Decimal | None = None
    budget_period: str | None = None
    expires_in_s: int | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def key(self, now: datetime) -> tuple[admin_pb2.Key, list[str]]:
        """The `Key` these options make, and the fields they name."""
        key = admin_pb2.Key(labels=self.labels)
        paths = ["labels"] if self.labels else []
        if self.models is not None:
            key.models.SetInParent()
            key.models.names.extend(self.models)
            paths.append("models")
        for name in ("requests_per_minute", "tokens_per_minute", "max_concurrent_requests"):
            if (value := getattr(self, name)) is not None:
                setattr(key, name, value)
                paths.append(name)
        if self.budget_usd is not None:
            key.budget.usd = str(self.budget_usd)
            key.budget.period = self.budget_period or ""
            paths.append("budget")
        elif self.budget_period is not None:
            raise ConfigError("--budget-period: needs --budget-usd")
        if self.expires_in_s is not None:
            try:
                key.expires_at.FromDatetime(now + timedelta(seconds=self.expires_in_s))
            except OverflowError:
                raise ConfigError(f"--expires-in: {_TOO_LATE}") from None
            paths.append("expires_at")
        return key, paths


def parse_duration(text: str, now: datetime | None = None) -> int:
    """`30d`, `12h`, `90m`, `3600s`, `2w` in seconds, ending by 9999-12-31T23:59:59Z
    (what an expiry may be) from `now`."""
    found = _DURATION.fullmatch(text.strip())
    if found is None or int(found[1]) < 1:
        raise ValueError(f"expected a duration such as 30d, 12h or 90m, not {text!r}")
    seconds = int(found[1]) * _UNITS[found[2]]
    if seconds > (_LAST_EXPIRY - (now or datetime.now(UTC))).total_seconds():
        raise ValueError(_TOO_LATE)
    return seconds


@asynccontextmanager
async def _handlers(config: Config) -> AsyncIterator[tuple[KeyAdmin, CallContext]]:
    store = open_store(config.usage.store)
    if store is None:
        raise ConfigError("usage.store: API keys need a store (it is 'none')")
    try:
        await store.open()
        yield (
            KeyAdmin(store, config),
            CallContext(request_id=new_id(), protocol="admin", caller=_OPERATOR),
        )
    except UnavailableError as exc:  # the store stopped answering
        raise OSError(str(exc)) from None
    except GatewayError as exc:  # the handlers' 400s, named as the API names them
        raise ConfigError(_option(str(exc))) from None
    finally:
        await store.aclose()


def _option(message: str) -> str:
    """A handler's message, its field named as the option that sets it."""
    for name, option in (
        ("requests_per_minute", "--rpm"),
        ("tokens_per_minute", "--tpm"),
        ("max_concurrent_requests", "--max-concurrent"),
        ("budget.usd", "--budget-usd"),
        ("budget.period", "--budget-period"),
        ("expires_at", "--expires-in"),
        ("models", "--models"),
        ("labels", "--label"),
        ("tier", "--tier"),
        ("user", "--user"),
    ):
        if message.startswith(f"{name}:"):
            return option + message.removeprefix(name)
    return message


async def create_key(
    config: Config, user: str, tier: str, options: KeyOptions | None = None
) -> dict[str, Any]:
    """The new key as the API writes it, `key` (the secret) included."""
    key, _ = (options or KeyOptions()).key(datetime.now(UTC))
    key.user, key.tier = user, tier
    async with _handlers(config) as (admin, ctx):
        created = await admin.create_key(admin_pb2.CreateKeyRequest(key=key), ctx)
    return encode_key(created)


async def update_key(config: Config, key_id: str, options: KeyOptions) -> dict[str, Any]:
    key, paths = options.key(datetime.now(UTC))
    if not paths:
        raise ConfigError("keys update: give at least one option to change")
    key.id = key_id
    request = admin_pb2.UpdateKeyRequest(key=key, update_mask=FieldMask(paths=paths))
    async with _handlers(config) as (admin, ctx):
        return encode_key(await admin.update_key(request, ctx))


async def list_keys(config: Config) -> list[dict[str, Any]]:
    """Every key, oldest first (page after page)."""
    found: list[dict[str, Any]] = []
    async with _handlers(config) as (admin, ctx):
        request = admin_pb2.ListKeysRequest(page_size=MAX_PAGE_SIZE)
        while True:
            page = await admin.list_keys(request, ctx)
            found += [encode_key(key) for key in page.keys]
            if not page.next_page_token:
                return found
            request.page_token = page.next_page_token


async def revoke_key(config: Config, key_id: str) -> bool:
    """Whether an active key was revoked (False: none, or revoked already)."""
    async with _handlers(config) as (admin, ctx):
        try:
            found = await admin.get_key(admin_pb2.GetKeyRequest(id=key_id), ctx)
        except NotFoundError:
            return False
        if found.revoked:
            return False
        await admin.revoke_key(admin_pb2.RevokeKeyRequest(id=key_id), ctx)
        return True


async def spend(config: Config, params: dict[str, str]) -> dict[str, Any]:
    """The spend answer as `/admin/v1/spend` writes it, for these query parameters."""
    try:
        request = parse_spend_params(params)
    except GatewayError as exc:
        raise ConfigError(f"--{str(exc).replace('_', '-')}") from None
    async with _handlers(config) as (admin, ctx):
        return encode_spend(await admin.get_spend(request, ctx))


def table(rows: Sequence[Sequence[object]]) -> str:
    """Columns aligned on the widest cell; the first row is the header."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
