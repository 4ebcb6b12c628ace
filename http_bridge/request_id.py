"""Pure ASGI middleware: an `x-request-id` on every answer, and a last-resort 500.

A valid incoming id (up to 128 of `[A-Za-z0-9._:-]`) is echoed, else a new
one is made; it is kept in `scope["state"]["request_id"]` for the handlers.
An exception that escapes the app is logged with that id and answered with
the contract's `internal_error` body, never a traceback.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from http_bridge.errors import error_response, spelled_ollama
from server.context import request_id_from
from server.errors import InternalError

__all__ = ["RequestIdMiddleware"]

logger = logging.getLogger("tandem.http")


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = request_id_from(incoming)
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", request_id.encode())
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("request %s failed", request_id)
            if not started:
                ollama = spelled_ollama(scope["path"])
                response = error_response(InternalError("internal error"), ollama=ollama)
                await response(scope, receive, send_with_id)
