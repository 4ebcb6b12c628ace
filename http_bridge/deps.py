"""FastAPI dependencies: the HTTP caller of the shared policy."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import Depends, Request

from server.core.context import CallContext, Protocol
from server.core.errors import InvalidRequestError
from server.policy import Policy

__all__ = ["NativeCall", "OllamaCall", "OpenAICall", "read_json"]


async def _open_call(request: Request, protocol: Protocol) -> CallContext:
    """Who is calling (the same `Policy.authenticate` the gRPC door calls)."""
    policy: Policy = request.app.state.policy
    caller = await policy.authenticate(request.headers.get("authorization"))
    ctx = CallContext(request_id=request.state.request_id, protocol=protocol, caller=caller)
    request.state.call = ctx  # the error handler adds its response headers
    return ctx


async def _native_call(request: Request) -> CallContext:
    return await _open_call(request, "native")


async def _openai_call(request: Request) -> CallContext:
    return await _open_call(request, "openai")


async def _ollama_call(request: Request) -> CallContext:
    return await _open_call(request, "ollama")


NativeCall = Annotated[CallContext, Depends(_native_call)]
OpenAICall = Annotated[CallContext, Depends(_openai_call)]
OllamaCall = Annotated[CallContext, Depends(_ollama_call)]


async def read_json(request: Request) -> object:
    body = await request.body()
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequestError("body: is not valid JSON", param="body") from None
