"""Stored responses, for any door that keeps a conversation (`/v1/responses` today).

A response is kept with its own input items under its owner, the caller as rate
limits count callers: an API key (`key:<id>`), else a JWT subject (`sub:<sub>`), an
admin key (`admin:<name>`), and the anonymous callers (`auth.required: false`)
together as one owner, `anonymous`, as they share one budget (their ids, 128 bits
that no id seen predicts, are the only secret between them). It lives
`responses.ttl_days`; another owner's, an expired or a deleted one is not found
(404), alike.

A continuation (`previous_id`) brings the chain's stored input and output back,
oldest first; a chain over `MAX_CHAIN_BYTES` of them is a 400 (it only grows).

The store is the usage store. While it is down (the readiness monitor says so,
`store_down`) a call that needs it is a 503 before any upstream is asked; a store
call that fails is a 503 too (`UnavailableError`), each under `STORE_TIMEOUT_S`.
Expired rows are purged on writes, `PURGE_BATCH` at most, once per
`PURGE_INTERVAL_S` per process: bounded work, and a read never returns one anyway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from server.config import ResponsesConfig
from server.context import CallContext, Caller
from server.errors import InvalidRequestError, NotFoundError, UnavailableError, echoed
from server.policy import Policy
from server.store import ConversationStore, StoredResponse

__all__ = ["MAX_CHAIN_BYTES", "Conversations", "History", "owner_of"]

logger = logging.getLogger("tandem.conversations")

JSON = dict[str, Any]
T = TypeVar("T")

MAX_CHAIN_BYTES = 16 * 2**20
STORE_TIMEOUT_S = 5.0
PURGE_BATCH = 100
PURGE_INTERVAL_S = 1.0
_DAY_S = 86_400.0


def owner_of(caller: Caller) -> str:
    """Whose a stored response is: the rate limits' caller, the kinds never confused."""
    if caller.key_id is not None:
        return f"key:{caller.key_id}"
    if caller.kind == "anonymous":
        return "anonymous"
    return f"{'admin' if caller.admin else 'sub'}:{caller.user}"


@dataclass(frozen=True, slots=True)
class History:
    """What a continuation brings back: the chain's items, oldest first."""

    previous_id: str
    items: list[JSON]
    chain_bytes: int  # stored input and output along the chain


MAX_ID_CHARS = 256  # ids are ours (`resp_` and 32 hex digits) or items' the caller named


def _storable(name: str) -> bool:
    """An id a store can look up: PostgreSQL text holds no NUL, nor a lone surrogate
    (which a URL's escapes can spell); no such id was ever stored."""
    if len(name) > MAX_ID_CHARS or "\x00" in name:
        return False
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def _not_found(response_id: str, param: str | None) -> NotFoundError:
    return NotFoundError(f"Response with id {echoed(response_id)!r} not found.", param=param)


class Conversations:
    def __init__(
        self,
        store: ConversationStore | None,
        config: ResponsesConfig,
        policy: Policy,
        store_down: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._ttl_s = config.ttl_days * _DAY_S
        self.store_default = (
            config.store_default if config.store_default is not None else (store is not None)
        )
        self._policy = policy
        self._store_down = store_down
        self._clock = clock
        self._purged_at = 0.0

    def wants_store(self, value: object) -> bool:
        """The request's `store`, its default the config's; true with no store is a 400."""
        if value is None:
            return self.store_default
        if not isinstance(value, bool):
            raise InvalidRequestError("store: must be a boolean", param="store")
        if value and self._store is None:
            raise InvalidRequestError(
                "store: responses are not stored here (usage.store: none)", param="store"
            )
        return value

    def check_available(self) -> None:
        """A 503 while the store is down: asked before the upstream is."""
        if self._store is not None and self._store_down():
            raise _unavailable()

    async def _call(self, work: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(STORE_TIMEOUT_S):
                return await work
        except Exception as exc:  # the store's own errors (asyncpg, sqlite3, OSError), a timeout
            logger.warning("response store call failed (%s)", type(exc).__name__)
            raise _unavailable() from None

    async def history(self, caller: Caller, previous_id: str) -> History:
        """The chain `previous_id` ends, for a continuation."""
        param = "previous_response_id"
        store = self._store
        if store is None or not _storable(previous_id):
            raise _not_found(previous_id, param)
        owner, now = owner_of(caller), self._clock()
        previous = await self._call(store.find_response(owner, previous_id, now))
        if previous is None:
            raise _not_found(previous_id, param)
        if previous.chain_bytes > MAX_CHAIN_BYTES:
            raise InvalidRequestError(
                f"{param}: the conversation passed {MAX_CHAIN_BYTES // 2**20} MiB of stored "
                "input and output; start a new one",
                param=param,
            )
        chain = await self._call(store.response_chain(owner, previous_id, now))
        items: list[JSON] = []
        for stored in chain:
            items += orjson.loads(stored.input)
            items += orjson.loads(stored.response)["output"]
        return History(previous_id, items, previous.chain_bytes)

    async def item(self, caller: Caller, item_id: str) -> JSON | None:
        """The caller's stored item of that id (input or output), if one lives."""
        if self._store is None or not _storable(item_id):
            return None
        stored = await self._call(self._store.find_item(owner_of(caller), item_id, self._clock()))
        if stored is None:
            return None
        items = [*orjson.loads(stored.input), *orjson.loads(stored.response)["output"]]
        return next((item for item in items if item.get("id") == item_id), None)

    async def keep(
        self,
        caller: Caller,
        response: JSON,
        input_items: list[JSON],
        history: History | None,
        splits: Sequence[Sequence[int]] = (),
    ) -> None:
        """Store an answered response (its items carry ids) before its answer ends."""
        assert self._store is not None
        now = self._clock()
        text = orjson.dumps(response).decode()
        input_text = orjson.dumps(input_items).decode()
        output_bytes = len(orjson.dumps(response["output"]))  # the settings echoed are not
        stored = StoredResponse(
            id=response["id"],
            owner=owner_of(caller),
            created_at=now,
            expires_at=now + self._ttl_s,
            previous_id=history.previous_id if history else None,
            chain_bytes=len(input_text) + output_bytes + (history.chain_bytes if history else 0),
            response=text,
            input=input_text,
            splits=orjson.dumps(splits).decode(),
        )
        ids = [
            item["id"]
            for item in (*input_items, *response["output"])
            if isinstance(item.get("id"), str)
        ]
        await self._call(self._store.save_response(stored, ids))
        if now - self._purged_at >= PURGE_INTERVAL_S:
            self._purged_at = now
            await self._call(self._store.purge_responses(now, PURGE_BATCH))

    async def get(self, ctx: CallContext, response_id: str) -> StoredResponse:
        await self._policy.admit_request(ctx)
        found = None
        if self._store is not None and _storable(response_id):
            found = await self._call(
                self._store.find_response(owner_of(ctx.caller), response_id, self._clock())
            )
        if found is None:
            raise _not_found(response_id, None)
        return found

    async def delete(self, ctx: CallContext, response_id: str) -> None:
        await self._policy.admit_request(ctx)
        gone = (
            self._store is not None
            and _storable(response_id)
            and await self._call(
                self._store.delete_response(owner_of(ctx.caller), response_id, self._clock())
            )
        )
        if not gone:
            raise _not_found(response_id, None)


def _unavailable() -> UnavailableError:
    return UnavailableError(
        "the response store is unavailable; retry shortly", code="response_store_unavailable"
    )
