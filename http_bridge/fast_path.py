"""Pure ASGI front door for the hot endpoints: a (method, path) table in front of FastAPI.

FastAPI 0.165's router and middleware stack cost ~100 us a request here (a
trivial route: 130 us in-process against 20 us on bare Starlette), a third of
the HTTP door's budget. Every route stays declared in FastAPI, for
/openapi.json and as the fallback; this table is built from those
declarations (the `LeanRoute`s) and answers errors with the app's own
exception handlers, so both paths give the same answers. FastAPI answers a
bug on its own path with the app's `Exception` handler too (from its
ServerErrorMiddleware), but then raises it again for the server to log a
second time: once an answer has started, this door stops it there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from fastapi import FastAPI, Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import Message, Receive, Scope, Send

from http_bridge.lean_route import LeanRoute

__all__ = ["FastPath"]

Handler = Callable[[Request], Awaitable[Response]]
ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]


class FastPath:
    def __init__(self, app: FastAPI, routes: Iterable[BaseRoute]) -> None:
        self.app = app
        self.table: dict[tuple[str, str], Handler] = {
            (method, route.path): route.get_route_handler()
            for route in routes
            if isinstance(route, LeanRoute)
            for method in route.methods or ()
        }

    def _exception_handler(self, exc: Exception) -> ExceptionHandler | None:
        handlers = self.app.exception_handlers
        for cls in type(exc).__mro__:
            if cls in handlers:
                return handlers[cls]  # type: ignore[return-value]
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = (
            self.table.get((scope["method"], scope["path"])) if scope["type"] == "http" else None
        )
        if handler is None:
            await self._fastapi(scope, receive, send)
            return
        scope["app"] = self.app
        request = Request(scope, receive)
        try:
            response = await handler(request)
        except Exception as exc:
            on_error = self._exception_handler(exc)
            if on_error is None:
                raise
            response = await on_error(request, exc)
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
