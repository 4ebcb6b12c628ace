"""Stored responses, for any door that keeps a conversation (`/v1/responses` today).

A response is kept with its own input items under its owner, the caller as rate
limits count callers: an API key (`key:<id>`), else a JWT subject (`sub:<sub>`), an
admin key (`admin:<name>`), and the anonymous callers (`auth.required: false`)
together as one owner, `anonymous`, as they share one budget (their ids, 128 bits
that no id seen predicts, are the only secret between them). It lives
`responses.ttl_days`; another owner's, an expired or a deleted one is not found
(404), alike.

A continuation (`previous_id`) brings the chain's stored input and output back,
oldest first; a chain over `MAX_CHAIN_BYTES` of them (UTF-8) or over
`MAX_CHAIN_DEPTH` responses is a 400 (it only grows). A chain one of whose earlier
responses expired or was deleted is a 404 naming `previous_response_id`: its
history is gone, and answering without it would be answering another conversation.
`item_reference`s are bounded before any item is read: `MAX_REFERENCES` of them, and
the bytes they resolve to (each as often as named) counted with the chain's against
`MAX_CHAIN_BYTES` (a 400 naming `input`); their sizes are one query, the items one
more. So the work a request makes here before its admission is bounded.

The store is the usage store. While it is down (the readiness monitor says so,
`store_down`) a call that needs it is a 503 before any upstream is asked; a store
call that fails is a 503 too (`UnavailableError`), each under `STORE_TIMEOUT_S`.
Expired rows are purged in the background (server.core.purging), never on a
request's path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from server.config import ResponsesConfig
from server.context import CallContext, Caller
from server.errors import InvalidRequestError, NotFoundError, UnavailableError, echoed
from server.policy import Policy
from server.store import ConversationStore, StoredItem, StoredResponse
from server.store.conversations import MAX_CHAIN_DEPTH, storable_id

__all__ = ["MAX_CHAIN_BYTES", "MAX_REFERENCES", "Conversations", "History", "owner_of"]

logger = logging.getLogger("tandem.conversations")

JSON = dict[str, Any]
T = TypeVar("T")

MAX_CHAIN_BYTES = 16 * 2**20
MAX_REFERENCES = 1_000  # `item_reference`s in one request's input
STORE_TIMEOUT_S = 5.0
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


def _given(item: JSON, given: Collection[str]) -> bool:
    return isinstance(item.get("id"), str) and item["id"] in given


def _too_big(param: str) -> InvalidRequestError:
    what = "its item_reference items and " if param == "input" else ""
    return InvalidRequestError(
        f"{param}: {what}the conversation passed {MAX_CHAIN_BYTES // 2**20} MiB of stored "
        "input and output; start a new one",
        param=param,
    )


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
        if store is None or not storable_id(previous_id):
            raise _not_found(previous_id, param)
        owner, now = owner_of(caller), self._clock()
        previous = await self._call(store.find_response(owner, previous_id, now))
        if previous is None:
            raise _not_found(previous_id, param)
        if previous.chain_bytes > MAX_CHAIN_BYTES:
            raise _too_big(param)
        chain = await self._call(store.response_chain(owner, previous_id, now))
        if not chain:  # expired or deleted since it was found
            raise _not_found(previous_id, param)
        if chain[0].previous_id is not None:  # the chain was cut, or is too long to read
            if len(chain) > MAX_CHAIN_DEPTH:
                raise InvalidRequestError(
                    f"{param}: the conversation passed {MAX_CHAIN_DEPTH:,} responses; "
                    "start a new one",
                    param=param,
                )
            raise NotFoundError(
                f"Response with id {echoed(previous_id)!r} continues one that expired or "
                "was deleted; its conversation cannot be continued.",
                param=param,
            )
        items: list[JSON] = []
        for link in chain:  # what chain_bytes counted, no more
            items += orjson.loads(link.input)
            items += orjson.loads(link.output)
        return History(previous_id, items, previous.chain_bytes)

    async def items(self, caller: Caller, wanted: Sequence[str], spent: int) -> dict[str, JSON]:
        """The caller's live stored items `wanted` names (by id, an id as often as it is
        named), their bytes counted with `spent` (the chain's) against
        `MAX_CHAIN_BYTES` before they are read; an id no live item has is left out."""
        if len(wanted) > MAX_REFERENCES:
            raise InvalidRequestError(
                f"input: {len(wanted):,} item_reference items; at most {MAX_REFERENCES:,}",
                param="input",
            )
        counts = Counter(ref for ref in wanted if storable_id(ref))
        if self._store is None or not counts:
            return {}
        owner, now = owner_of(caller), self._clock()
        sizes = await self._call(self._store.item_sizes(owner, list(counts), now))
        if spent + sum(size * counts[ref] for ref, (_, size) in sizes.items()) > MAX_CHAIN_BYTES:
            raise _too_big("input")
        where = [(response, ref) for ref, (response, _) in sizes.items()]
        found = await self._call(self._store.load_items(owner, where))
        return {ref: orjson.loads(text) for ref, text in found.items()}

    async def keep(
        self,
        caller: Caller,
        response: JSON,
        input_items: list[JSON],
        history: History | None,
        splits: Sequence[Sequence[int]] = (),
        given: Collection[str] = (),
    ) -> None:
        """Store an answered response (its items carry ids) before its answer ends; the
        items a reference may name are its output and the input whose id the caller
        gave (`given`), not ids minted for input (those serve `input_items` only)."""
        assert self._store is not None
        now = self._clock()
        input_bytes = orjson.dumps(input_items)
        output_bytes = orjson.dumps(response["output"])  # the settings echoed are not counted
        spent = history.chain_bytes if history else 0
        stored = StoredResponse(
            id=response["id"],
            owner=owner_of(caller),
            created_at=now,
            expires_at=now + self._ttl_s,
            previous_id=history.previous_id if history else None,
            chain_bytes=len(input_bytes) + len(output_bytes) + spent,
            response=orjson.dumps(response).decode(),
            input=input_bytes.decode(),
            splits=orjson.dumps(splits).decode(),
            output=output_bytes.decode(),
        )
        referable = {  # one row an id: the last item of that id is the one named
            item["id"]: item
            for item in (
                *(item for item in input_items if _given(item, given)),
                *response["output"],
            )
            if isinstance(item.get("id"), str) and storable_id(item["id"])
        }
        rows = []
        for item_id, item in referable.items():
            text = orjson.dumps(item)
            rows.append(StoredItem(item_id, text.decode(), len(text)))
        await self._call(self._store.save_response(stored, rows))

    async def get(self, ctx: CallContext, response_id: str) -> StoredResponse:
        await self._policy.admit_request(ctx)
        found = None
        if self._store is not None and storable_id(response_id):
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
            and storable_id(response_id)
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
