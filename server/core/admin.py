"""The admin API's handlers (`AdminService`, `/admin/v1/*`, `tandem keys` and `tandem
spend`): API keys made, read, listed, changed and revoked, and spend summed from the
ledger. One set, called by both doors and the CLI, for admin callers alone.

Keys are the store's (`usage.store`); a replica sees a change or a revocation made
anywhere within `auth.key_cache_s` (server/policy/key_cache.py refetches each key
per TTL). Pages are AIP-158's: an opaque token holds the last key seen and a digest
of the filters, so a token reused with other filters is refused rather than
answered with a page of another listing.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import orjson
from tandem.v1 import admin_pb2

from server.config import Config
from server.context import CallContext
from server.core.key_fields import (
    check_text,
    given,
    in_range,
    key_message,
    key_not_found,
    narrowing,
)
from server.errors import (
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
    echoed,
)
from server.policy import Policy
from server.store import ApiKey, Store
from server.store.keys import UPDATABLE, new_key
from server.store.keys_sql import KeyPage
from server.store.spend_sql import GROUPS, SpendQuery, SpendRow
from server.usage.money import nanos_text

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "KeyAdmin"]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
DEFAULT_TIER = "free"
T = TypeVar("T")
logger = logging.getLogger("tandem.admin")


class KeyAdmin:
    def __init__(
        self,
        store: Store | None,
        config: Config,
        policy: Policy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._config = config
        self._policy = policy  # None: the CLI, whose operator holds the store itself
        self._clock = clock

    async def create_key(
        self, request: admin_pb2.CreateKeyRequest, ctx: CallContext
    ) -> admin_pb2.Key:
        store = await self._open(ctx)
        key = request.key
        for name in ("id", "key"):
            if getattr(key, name):
                raise InvalidRequestError(f"{name}: set by the server", param=name)
        if key.HasField("created_at") or key.revoked:
            name = "created_at" if key.HasField("created_at") else "revoked"
            raise InvalidRequestError(f"{name}: set by the server", param=name)
        user = check_text("user", key.user, required=True)
        tier = key.tier or DEFAULT_TIER
        if tier not in self._config.tiers:
            raise InvalidRequestError(
                f"tier: tier {echoed(tier)!r} does not exist in the config", param="tier"
            )
        paths = [path for path in UPDATABLE if path == "labels" or given(key, path)]
        fields = narrowing(key, paths, self._config, tier, self._clock())
        secret, record = new_key(user, tier)
        record = dataclasses.replace(record, **fields)
        await _stored(store.create_key(record))
        return key_message(record, secret)

    async def get_key(self, request: admin_pb2.GetKeyRequest, ctx: CallContext) -> admin_pb2.Key:
        store = await self._open(ctx)
        return key_message(await self._find(store, request.id))

    async def list_keys(
        self, request: admin_pb2.ListKeysRequest, ctx: CallContext
    ) -> admin_pb2.ListKeysResponse:
        store = await self._open(ctx)
        user = check_text("user", request.user) or None
        tier = check_text("tier", request.tier) or None
        size = request.page_size or DEFAULT_PAGE_SIZE
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise InvalidRequestError(f"page_size: 1 to {MAX_PAGE_SIZE}", param="page_size")
        filters = _digest(user, tier)
        after = _read_token(request.page_token, filters) if request.page_token else None
        page = KeyPage(user=user, tier=tier, after=after, limit=size)
        keys = await _stored(store.list_keys_page(page))
        response = admin_pb2.ListKeysResponse(keys=[key_message(key) for key in keys[:size]])
        if len(keys) > size:
            last = keys[size - 1]
            response.next_page_token = _token(last.created_at, last.id, filters)
        return response

    async def update_key(
        self, request: admin_pb2.UpdateKeyRequest, ctx: CallContext
    ) -> admin_pb2.Key:
        store = await self._open(ctx)
        key = request.key
        found = await self._find(store, key.id)
        paths = list(request.update_mask.paths)
        if not paths:  # AIP-134: no mask means the fields that are set
            paths = [path for path in UPDATABLE if given(key, path)]
        if not paths:
            raise InvalidRequestError("update_mask: names no field to change", param="update_mask")
        for path in paths:
            if path not in UPDATABLE:
                raise InvalidRequestError(
                    f"update_mask: {echoed(path)!r} cannot be changed (only "
                    f"{', '.join(UPDATABLE)})",
                    param="update_mask",
                )
        fields = narrowing(key, dict.fromkeys(paths), self._config, found.tier, self._clock())
        updated = await _stored(store.update_key(found.id, fields, self._clock()))
        if updated is None:
            raise key_not_found(found.id)
        return key_message(updated)

    async def revoke_key(
        self, request: admin_pb2.RevokeKeyRequest, ctx: CallContext
    ) -> admin_pb2.Key:
        """Revoke the key (again: no change) and return it."""
        store = await self._open(ctx)
        found = await self._find(store, request.id)
        if not found.revoked:
            await _stored(store.revoke_key(found.id, self._clock()))
        return key_message(await self._find(store, found.id))

    async def get_spend(
        self, request: admin_pb2.GetSpendRequest, ctx: CallContext
    ) -> admin_pb2.GetSpendResponse:
        store = await self._open(ctx)
        if request.group_by and request.group_by not in GROUPS:
            raise InvalidRequestError(
                f"group_by: expected one of {', '.join(GROUPS)}", param="group_by"
            )
        query = SpendQuery(
            user=check_text("user", request.user) or None,
            key_id=check_text("key_id", request.key_id) or None,
            model=check_text("model", request.model) or None,
            since=in_range("since", request.since) if request.HasField("since") else None,
            until=in_range("until", request.until) if request.HasField("until") else None,
            group_by=request.group_by or None,  # checked above: one of GROUPS
        )
        report = await _stored(store.spend(query))
        return admin_pb2.GetSpendResponse(
            groups=[_group(row) for row in report.groups], totals=_group(report.totals)
        )

    def authorize(self, ctx: CallContext) -> None:
        """Refuse (403) any caller but an admin key, before anything else is read."""
        if not ctx.caller.admin:
            raise PermissionDeniedError("the admin API is for admin keys only")

    async def _open(self, ctx: CallContext) -> Store:
        """The store, for an admin caller; any other is refused before anything is read."""
        self.authorize(ctx)
        if self._policy is not None:
            await self._policy.admit_request(ctx)  # as every route: admin keys have no limits
        if self._store is None:
            raise NotFoundError("keys are not kept here (usage.store: none)", code="store_off")
        return self._store

    async def _find(self, store: Store, key_id: str) -> ApiKey:
        if not key_id:
            raise InvalidRequestError("id: required", param="id")
        found = await _stored(store.find_key(check_text("id", key_id)))
        if found is None:
            raise key_not_found(key_id)
        return found


async def _stored(call: Awaitable[T]) -> T:
    """A store call; its own errors (asyncpg, sqlite3, OSError) mean it is down: 503."""
    try:
        return await call
    except Exception as exc:
        logger.warning("admin store call failed: store unavailable (%s)", type(exc).__name__)
        raise UnavailableError(
            "the key store is unavailable; retry shortly", code="store_unavailable"
        ) from None


def _group(row: SpendRow) -> admin_pb2.SpendGroup:
    return admin_pb2.SpendGroup(
        group=row.group,
        requests=row.requests,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        total_tokens=row.prompt_tokens + row.completion_tokens,
        cost_nanos=row.cost_nanos,
        cost_usd=nanos_text(row.cost_nanos),
    )


def _digest(user: str | None, tier: str | None) -> str:
    """What a token remembers of the filters it was made for."""
    return hashlib.sha256(orjson.dumps([user, tier])).hexdigest()[:16]


def _token(created_at: float, key_id: str, filters: str) -> str:
    raw = orjson.dumps([created_at, key_id, filters])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_token(token: str, filters: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        created_at, key_id, made_for = orjson.loads(raw)
        valid = (
            isinstance(created_at, float | int)
            and isinstance(key_id, str)
            and isinstance(made_for, str)
        )
    except (binascii.Error, ValueError, TypeError):
        valid = False
    if not valid:
        raise InvalidRequestError("page_token: not a token of this listing", param="page_token")
    check_text("page_token", key_id)  # never a NUL into the store's query
    if made_for != filters:
        raise InvalidRequestError(
            "page_token: made for other filters (user, tier): list again from the first page",
            param="page_token",
        )
    return float(created_at), key_id
