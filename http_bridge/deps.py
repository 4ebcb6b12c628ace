"""Opening an HTTP call (the caller, by the shared policy), and reading its JSON body."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from fastapi import Request

from http_bridge.doors import Door
from server.context import CallContext
from server.errors import InvalidRequestError, echoed
from server.policy import Policy
from server.translate.protojson import MAX_JSON_DEPTH, deeper_than, too_deep

__all__ = ["call_opener", "open_call", "read_json"]


async def open_call(request: Request, door: Door) -> CallContext:
    """Who is calling (the same `Policy.authenticate` the gRPC door calls), by the key in
    the door's `key_header`, else `authorization`; the call is recorded as `door`'s."""
    policy: Policy = request.app.state.policy
    headers = request.headers
    key = headers.get(door.key_header) if door.key_header is not None else None
    caller = await policy.authenticate(f"Bearer {key}" if key else headers.get("authorization"))
    state = request.state  # what http_bridge/call_scope.py read off the request
    ctx = CallContext(
        request_id=state.request_id,
        protocol=door.name,
        caller=caller,
        started=state.started,
        traceparent=state.traceparent,
        tracestate=state.tracestate,
        anthropic_beta=state.anthropic_beta,
    )
    request.state.call = ctx  # the error handler adds its response headers
    return ctx


def call_opener(door: Door) -> Callable[[Request], Awaitable[CallContext]]:
    """What opens a call to `door`: `Endpoints`' for its table, a dependency for FastAPI's."""

    async def open_door_call(request: Request) -> CallContext:
        return await open_call(request, door)

    return open_door_call


async def read_json(request: Request) -> object:
    """The body as JSON; a 400 if it is not JSON or nests deeper than `MAX_JSON_DEPTH`.

    Cost, measured here: counting the brackets is ~0.7 us a KB (4 us for a
    5 KB chat with 8 tools, against 13 us to decode it); the decoded value is
    walked only when there are more than `MAX_JSON_DEPTH` (fewer cannot nest
    deeper): 23 us for that chat, a tenth of parsing it into the proto. The
    walk stops `MAX_JSON_DEPTH` levels down, so it never recurses further.
    """
    body = await request.body()
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):  # orjson's own, at 1024 levels
            raise too_deep("body") from None
        raise InvalidRequestError("body: is not valid JSON", param="body") from None
    if (
        body.count(b"{") + body.count(b"[") > MAX_JSON_DEPTH
        and isinstance(value, dict | list)
        and (path := deeper_than(value, MAX_JSON_DEPTH - 1)) is not None
    ):
        raise too_deep(_path_name(path))
    return value


def _path_name(path: list[str | int]) -> str:
    """`tools[0].function.parameters`, as the strict parser names fields."""
    name = "" if isinstance(path[-1], str) else "body"
    for key in reversed(path):
        name += f"[{key}]" if isinstance(key, int) else f".{key}" if name else key
    return echoed(name)
