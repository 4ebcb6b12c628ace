"""How an HTTP request finds its handler, and how any failure becomes an answer.

The door's own endpoints (chat, embeddings, on every dialect) are served
from a `(method, path)` table: FastAPI's router and middleware stack cost
~100 us a request measured here (a trivial route: 130 us in-process against
20 us on bare Starlette), a third of the HTTP door's budget. Each is
registered once, here, with the function that opens its call (its door's
protocol, `Policy.authenticate`); FastAPI only documents them (`documented`,
for /openapi.json) and serves everything else (listings, usage, ops, /docs,
404s).

Both paths answer a failure with `error_to_response`. FastAPI answers a bug
on its path with it too (from its ServerErrorMiddleware), then raises it
again for the server to log a second time: once an answer has started, this
door stops it there.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from enum import Enum
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from http_bridge import handlers
from http_bridge.deps import call_opener
from http_bridge.dialects import Dialect
from http_bridge.disconnect import ClientDisconnected
from http_bridge.doors import Door, door_at, spelling_at
from http_bridge.errors import error_response
from server.context import CallContext
from server.errors import GatewayError, InternalError, InvalidRequestError, NotFoundError

__all__ = ["ERRORS_ANSWERED", "DoorApp", "Endpoints", "any_json_body", "error_to_response"]

logger = logging.getLogger("tandem.http")

Endpoint = Callable[[Request, CallContext], Awaitable[Response]]
OpenCall = Callable[[Request], Awaitable[CallContext]]

# what `error_to_response` is registered for on the FastAPI side: the classes
# Starlette and FastAPI would otherwise answer with their own bodies, and the rest
ERRORS_ANSWERED = (
    GatewayError,
    HTTPException,
    RequestValidationError,
    ClientDisconnected,
    ClientDisconnect,
    Exception,
)


async def _call_headers(request: Request) -> list[tuple[str, str]]:
    """The headers of an authenticated caller's call, rate limits included."""
    ctx: CallContext | None = getattr(request.state, "call", None)
    if ctx is None:
        return []
    await request.app.state.policy.add_headers(ctx)
    return list(ctx.response_headers)


async def error_to_response(request: Request, exc: Exception) -> Response:
    """The contract's answer to any failure, on every route: the error model's
    status, headers and body (in the shapes of the path's door), never a traceback."""
    spelling = spelling_at(request.url.path)
    if isinstance(exc, GatewayError):
        return error_response(exc, spelling=spelling, headers=await _call_headers(request))
    if isinstance(exc, ClientDisconnected | ClientDisconnect):
        return Response(status_code=499)  # nobody is listening; uvicorn drops it
    if isinstance(exc, HTTPException):
        error: GatewayError
        if exc.status_code == 404:
            error = NotFoundError(f"no route {request.method} {request.url.path}")
        else:
            error = InvalidRequestError(str(exc.detail))
        headers = list((exc.headers or {}).items())
        return error_response(error, spelling=spelling, status=exc.status_code, headers=headers)
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0]
        parts = (str(part) for part in first["loc"] if part not in ("body", "query", "path"))
        param = ".".join(parts)
        invalid = InvalidRequestError(f"{param}: {first['msg']}", param=param or None)
        return error_response(invalid, spelling=spelling)
    # anything else is a bug: logged once with the request id, answered and nothing more
    logger.error("request %s failed", request.state.request_id, exc_info=exc)
    return error_response(
        InternalError("internal error"), spelling=spelling, headers=await _call_headers(request)
    )


async def _documented_only(request: Request) -> Response:
    raise AssertionError("served by DoorApp, never by FastAPI")  # pragma: no cover


def any_json_body(summary: str, description: str) -> dict[str, Any]:
    """`Endpoints.post`'s description of a route whose body is any JSON object: a door
    that takes another API's shapes as that API writes them."""
    body = {"content": {"application/json": {"schema": {"type": "object"}}}, "required": True}
    return {"summary": summary, "description": description, "openapi_extra": {"requestBody": body}}


class Endpoints:
    """One door's routes: its own endpoints' table, each opening its call to the door
    (`Policy.authenticate`) then running, and `router`, its routes FastAPI serves
    (listings, usage). A path that is not the door's (doors.py) is refused here."""

    def __init__(self, door: Door) -> None:
        self.door = door
        self.open_call: OpenCall = call_opener(door)
        self.tags: list[str | Enum] = [door.name]
        self.table: dict[tuple[str, str], tuple[Endpoint, OpenCall]] = {}
        self.documented: list[APIRoute] = []  # the same routes, for /openapi.json only
        self.router = APIRouter(tags=self.tags)

    def post(self, path: str, **openapi: Any) -> Callable[[Endpoint], Endpoint]:
        """Decorator: serve `POST path` with `endpoint(request, await open_call(request))`;
        `openapi` (summary, openapi_extra, ...) describes it in /openapi.json."""
        return self.route("POST", path, **openapi)

    def route(self, method: str, path: str, **openapi: Any) -> Callable[[Endpoint], Endpoint]:
        """`post`, for any method."""
        if door_at(path) is not self.door:
            raise ValueError(f"{path} is not a path of the {self.door.name} door")

        def register(endpoint: Endpoint) -> Endpoint:
            self.table[method, path] = (endpoint, self.open_call)
            route = APIRoute(path, _documented_only, methods=[method], tags=self.tags, **openapi)
            self.documented.append(route)
            return endpoint

        return register

    def chat(self, path: str, dialect: Dialect, **openapi: Any) -> None:
        """Serve chats in `dialect` at `POST path` (handlers.py)."""

        async def create_chat(request: Request, ctx: CallContext) -> Response:
            return await handlers.create_chat(request, ctx, dialect)

        self.post(path, **openapi)(create_chat)

    def embeddings(self, path: str, dialect: Dialect, **openapi: Any) -> None:
        """Serve embeddings in `dialect` at `POST path` (handlers.py)."""

        async def create_embeddings(request: Request, ctx: CallContext) -> Response:
            return await handlers.create_embeddings(request, ctx, dialect)

        self.post(path, **openapi)(create_embeddings)


class DoorApp:
    """Serves the endpoints' table, and everything else through the FastAPI app."""

    def __init__(self, app: FastAPI, endpoints: Iterable[Endpoints]) -> None:
        self.app = app
        self.table: dict[tuple[str, str], tuple[Endpoint, OpenCall]] = {}
        for group in endpoints:
            if clash := self.table.keys() & group.table.keys():
                raise ValueError(f"registered twice: {sorted(clash)}")
            self.table.update(group.table)
        self.allowed: dict[str, str] = {}  # path -> its methods, the `allow` of a 405
        for method, path in sorted(self.table):
            known = self.allowed.get(path)
            self.allowed[path] = f"{known}, {method}" if known else method

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        http = scope["type"] == "http"
        found = self.table.get((scope["method"], scope["path"])) if http else None
        if found is None and not (http and scope["path"] in self.allowed):
            await self._fastapi(scope, receive, send)
            return
        scope["app"] = self.app
        request = Request(scope, receive)
        try:
            if found is None:
                raise HTTPException(405, headers={"allow": self.allowed[scope["path"]]})
            endpoint, open_call = found
            response = await endpoint(request, await open_call(request))
        except Exception as exc:
            response = await error_to_response(request, exc)
        await response(scope, receive, send)

    async def _fastapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answered = False

        async def watched(message: Message) -> None:
            nonlocal answered
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception:
            if not answered:  # the handler itself failed: the last resort answers
                raise
