"""`/v1/responses`: OpenAI's Responses API, so the `openai` SDK's `responses.create`,
`responses.stream`, `retrieve`, `delete` and `input_items.list` reach every model
behind the gateway, with the same keys, limits and ledger.

With `store` (default `responses.store_default`) the answer is kept before its last
event leaves (a stream's `response.completed`, a whole answer's 200), so a
continuation on another replica finds it at once: the core's conversation store
(server/core/conversations.py). A store that fails then fails the answer (a
stream's `response.failed`, else a 503): the caller asked for a response it can
continue, and one that cannot be continued would fail later, silently.
`previous_response_id` brings the chain's input and output before the new input
(not its instructions); an `item_reference` is a stored item of the caller's. What a
request makes the store read is bounded before it is admitted (`_with_stored`).

A WebSocket upgrade on `GET /v1/responses` (Codex tries one first, when its provider
says it may) is refused at once with 426: the one refusal that makes a client fall
back to SSE without retrying.

The answer echoes the request's settings, so the route reads the body itself and gives
them to the door's encoders (a dialect varied per request, `dataclasses.replace`), with
the request's tool names (custom and namespaced tools mapped back) and the sealer of
reasoning items (made at start-up, on the data plane).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Annotated, Any

import orjson
from fastapi import Depends, HTTPException, Request
from starlette.responses import JSONResponse, Response

from http_bridge import handlers
from http_bridge.deps import read_json
from http_bridge.doors import RESPONSES
from http_bridge.errors import openai_error_body
from http_bridge.framing import NAMED_SSE
from http_bridge.relayed import relayed_response
from http_bridge.responses import reply, reply_encoded
from http_bridge.routing import Endpoints, any_json_body
from server.context import CallContext
from server.core.conversations import Conversations, History
from server.core.dataplane import DataPlane
from server.errors import InvalidRequestError
from server.translate.common import invalid_field
from server.translate.protocols import JSON
from server.translate.responses import inbound, replies, stored

__all__ = ["endpoints"]

endpoints = Endpoints(RESPONSES)  # served by the door's table (routing.py)
Call = Annotated[CallContext, Depends(endpoints.open_call)]

_BODY = (
    "OpenAI's Responses request; hosted tools and fields the gateway cannot carry are "
    "named in x-tandem-ignored-fields. `store` keeps the response for `previous_response_id`, "
    "`GET`, `DELETE` and `input_items`."
)


@endpoints.post(
    "/v1/responses",
    **any_json_body("Create a response (OpenAI's Responses API; named SSE events)", _BODY),
)
async def create_response(request: Request, ctx: CallContext) -> Response:
    body = await read_json(request)
    if (relayed := await relayed_response(request, ctx, body)) is not None:
        return relayed  # a `responses: native` provider's model: relayed (relayed.py)
    conversations: Conversations = request.app.state.conversations
    if not isinstance(body, dict):
        raise invalid_field("body", "must be a JSON object")
    store = conversations.wants_store(body.get("store"))
    previous = body.get("previous_response_id")
    if previous is not None and not isinstance(previous, str):
        raise invalid_field("previous_response_id", "must be a string")
    if store or previous is not None or stored.references(body.get("input")):
        conversations.check_available()  # a 503 before the upstream is asked
    body, own, history = await _with_stored(body, previous, conversations, ctx)
    plane: DataPlane = request.app.state.plane
    sealer = plane.sealer
    dialect = RESPONSES.dialect
    left_out: list[str] = []  # what of the items was left out: read_chat parses, then names
    chat = dataclasses.replace(
        dialect,
        parse_chat=functools.partial(inbound.parse_chat, sealer=sealer, left_out=left_out),
        unread=lambda body: [*inbound.unread(body), *left_out],
    ).read_chat(body, ctx)
    settings = inbound.settings(body, store)
    names = inbound.tool_names(body)

    given = stored.given_ids(own)

    async def keep(answer: JSON, splits: Sequence[Sequence[int]] = ()) -> None:
        kept = stored.own_input(own, answer["id"])
        await conversations.keep(ctx.caller, answer, kept, history, splits, given)

    answers: list[JSON] = []

    def encode_completion(answer: Any, ctx: CallContext) -> JSON:
        encoded = replies.encode_completion(answer, settings, names=names, sealer=sealer)
        answers.append(encoded)
        return encoded

    dialect = dataclasses.replace(
        dialect,
        encode_completion=encode_completion,
        stream_encoder=lambda request, first, ctx: replies.StreamEncoder(
            first, settings, keep if store else None, names=names, sealer=sealer
        ),
    )
    response = await handlers.create_chat(request, ctx, dialect, chat)
    if store and answers:  # a whole answer, kept before its 200 leaves
        await keep(answers[0])
    return response


async def _with_stored(
    body: JSON, previous: str | None, conversations: Conversations, ctx: CallContext
) -> tuple[JSON, Any, History | None]:
    """The body with the stored chain before its input and its `item_reference`s
    resolved; the caller's own input (resolved), as it is kept; the chain. The input's
    bounds are checked first, and what is read is bounded (Conversations)."""
    own = body.get("input")
    stored.check_input(own)
    history = None if previous is None else await conversations.history(ctx.caller, previous)
    wanted = stored.references(own)
    if wanted:
        spent = history.chain_bytes if history else 0
        found = await conversations.items(ctx.caller, wanted, spent)
        own = stored.resolve_references(own, found)
    if history is None and not wanted:
        return body, own, None
    items = [{"role": "user", "content": own}] if isinstance(own, str) else own
    if isinstance(items, list):  # else not an input: read_chat says so
        body = {**body, "input": [*(history.items if history else []), *items]}
    return body, own, history


@endpoints.router.get(
    "/v1/responses/{response_id}",
    summary="A stored response (`?stream=true` replays its events, `starting_after=N`)",
)
async def retrieve_response(request: Request, response_id: str, ctx: Call) -> Response:
    conversations: Conversations = request.app.state.conversations
    found = await conversations.get(ctx, response_id)
    query = request.query_params
    if query.get("stream", "false").lower() != "true":
        return reply_encoded(ctx, found.response)
    try:
        after = int(query.get("starting_after", "-1"))
    except ValueError:
        raise invalid_field("starting_after", "must be an integer") from None
    events = stored.replay(orjson.loads(found.response), orjson.loads(found.splits), after)
    return reply_encoded(ctx, events, NAMED_SSE.media_type.decode())


@endpoints.router.delete("/v1/responses/{response_id}", summary="Delete a stored response")
async def delete_response(request: Request, response_id: str, ctx: Call) -> Response:
    conversations: Conversations = request.app.state.conversations
    await conversations.delete(ctx, response_id)
    return reply(ctx, {"id": response_id, "object": "response.deleted", "deleted": True})


@endpoints.router.get(
    "/v1/responses/{response_id}/input_items",
    summary="A stored response's input items, newest first (`limit`, `after`, `order`)",
)
async def list_input_items(request: Request, response_id: str, ctx: Call) -> Response:
    conversations: Conversations = request.app.state.conversations
    query = request.query_params
    found = await conversations.get(ctx, response_id)
    page = stored.input_page(
        orjson.loads(found.input), query.get("limit"), query.get("after"), query.get("order")
    )
    return reply(ctx, page)


_NO_WEBSOCKET = openai_error_body(
    InvalidRequestError(
        "the Responses API is served over HTTP here: POST /v1/responses (SSE)",
        code="websocket_not_supported",
    )
)


@endpoints.route(
    "GET",
    "/v1/responses",
    summary="A WebSocket upgrade: refused with 426 (POST streams over SSE)",
    responses={426: {"description": "WebSocket not supported"}},
)
async def refuse_websocket(request: Request, ctx: CallContext) -> Response:
    if request.headers.get("upgrade", "").lower() != "websocket":
        raise HTTPException(405, headers={"allow": "POST"})
    return JSONResponse(_NO_WEBSOCKET, status_code=426)
