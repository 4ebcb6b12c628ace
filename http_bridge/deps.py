"""Opening an HTTP call (the caller, by the shared policy), and reading its JSON body."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import Depends, Request

from server.context import CallContext, Protocol
from server.errors import InvalidRequestError, echoed
from server.policy import Policy
from server.translate.protojson import MAX_JSON_DEPTH, deeper_than, too_deep

__all__ = [
    "ModelsCall",
    "NativeCall",
    "OllamaCall",
    "anthropic_call",
    "models_call",
    "native_call",
    "ollama_call",
    "openai_call",
    "read_json",
]


async def _open_call(
    request: Request, protocol: Protocol, authorization: str | None = None
) -> CallContext:
    """Who is calling (the same `Policy.authenticate` the gRPC door calls)."""
    policy: Policy = request.app.state.policy
    caller = await policy.authenticate(authorization or request.headers.get("authorization"))
    state = request.state  # what http_bridge/call_scope.py read off the request
    ctx = CallContext(
        request_id=state.request_id,
        protocol=protocol,
        caller=caller,
        started=state.started,
        traceparent=state.traceparent,
        tracestate=state.tracestate,
        anthropic_beta=state.anthropic_beta,
    )
    request.state.call = ctx  # the error handler adds its response headers
    return ctx


async def native_call(request: Request) -> CallContext:
    return await _open_call(request, "native")


async def openai_call(request: Request) -> CallContext:
    return await _open_call(request, "openai")


async def ollama_call(request: Request) -> CallContext:
    return await _open_call(request, "ollama")


async def anthropic_call(request: Request) -> CallContext:
    """Anthropic's clients send the key as `x-api-key`; a Bearer token works too."""
    key = request.headers.get("x-api-key")
    return await _open_call(request, "anthropic", f"Bearer {key}" if key else None)


# the same, as FastAPI dependencies for the routes FastAPI serves
NativeCall = Annotated[CallContext, Depends(native_call)]
OllamaCall = Annotated[CallContext, Depends(ollama_call)]


async def models_call(request: Request) -> CallContext:
    """`/v1/models` serves OpenAI's clients and, by `anthropic-version`, Anthropic's."""
    if "anthropic-version" in request.headers:
        return await anthropic_call(request)
    return await openai_call(request)


ModelsCall = Annotated[CallContext, Depends(models_call)]


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
