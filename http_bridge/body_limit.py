"""Pure ASGI middleware: refuse a body over `max_body_bytes` with 413, before reading it."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from http_bridge.doors import spelling_at
from http_bridge.errors import error_response
from server.errors import RequestTooLargeError

__all__ = ["BodyLimitMiddleware"]


class BodyLimitMiddleware:
    """A declared `content-length` over the limit is answered at once; a
    chunked body is counted as it arrives and fails the read past the limit."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.limit = max_body_bytes

    def _too_large(self) -> RequestTooLargeError:
        return RequestTooLargeError(
            f"request body is larger than the limit of {self.limit} bytes", code="body_too_large"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.limit:
                    answer = error_response(self._too_large(), spelling=spelling_at(scope["path"]))
                    await answer(scope, receive, send)
                    return
                await self.app(scope, receive, send)
                return

        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise self._too_large()
            return message

        await self.app(scope, counting_receive, send)
