"""Pure ASGI middleware: which browser pages may call the gateway (`server.cors_origins`).

A browser sends `Origin` with every cross-origin request, and may send a
`text/plain` POST (a "simple" request) without asking first; the doors
parse it as JSON all the same, so without this check any web page could
make its visitors' browsers drive completions through a gateway they can
reach (with `auth.required: false`, at no cost to the page). Ollama guards
its API the same way (`OLLAMA_ORIGINS`). So:

- no `Origin` (every SDK, curl, a same-origin GET): passed on untouched;
- a listed origin (or any, with `"*"`): passed on, its answer carrying the
  CORS headers; a preflight (OPTIONS with `access-control-request-method`)
  is answered here, 204, and counts no request against a rate limit;
- an origin whose host and port are the request's `Host`, that host being
  `localhost` or a loopback address: passed on as a listed one (the gateway's
  own `/docs` page on a developer's machine). A DNS-rebinding page has its
  own name in `Host`, never a loopback one, and is refused;
- anything else: 403 `permission_error` (code `origin_not_allowed`) in the
  door's error spelling, before anything else reads the request.

Inside the call scope, so a refusal and a preflight carry `x-request-id`
and are logged like any answer on a door route. A request without `Origin`
costs one pass over its header names.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from http_bridge.doors import spelling_at
from http_bridge.errors import error_response
from server.errors import PermissionDeniedError, echoed

__all__ = ["OriginGuard"]

ALLOWED_METHODS = b"GET, HEAD, POST, PATCH, DELETE"
# what a page's script may read of an answer, beyond the CORS-safelisted headers
EXPOSED_HEADERS = (
    b"x-request-id, retry-after, retry-after-ms, x-should-retry, "
    b"x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, "
    b"x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens, "
    b"x-budget-limit-usd, x-budget-remaining-usd, x-budget-reset, x-tandem-ignored-fields, "
    b"server-timing"
)
PREFLIGHT_MAX_AGE_S = b"600"  # a browser asks again after this (Chrome caps it at 7200)
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class OriginGuard:
    def __init__(self, app: ASGIApp, origins: Iterable[str]) -> None:
        self.app = app
        listed = set(origins)
        self._any = "*" in listed
        self._listed = frozenset(origin.encode() for origin in listed)  # as config.py wrote them

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"origin":
                    await self._from_a_page(value, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _from_a_page(self, origin: bytes, scope: Scope, receive: Receive, send: Send) -> None:
        allowed = self._allowed_as(origin, scope)
        if allowed is None:
            text = origin.decode("latin-1")
            refusal = PermissionDeniedError(
                f"origin {echoed(text)!r} may not call this gateway: "
                "a page's origin must be listed in server.cors_origins",
                code="origin_not_allowed",
            )
            await error_response(refusal, spelling=spelling_at(scope["path"]))(scope, receive, send)
            return
        cors = [(b"access-control-allow-origin", allowed)]
        if allowed != b"*":
            cors.append((b"vary", b"origin"))
        if scope["method"] == "OPTIONS":
            requested = _request_headers(scope)
            if requested is not None:
                await _answer_preflight(cors, requested, send)
                return
        cors.append((b"access-control-expose-headers", EXPOSED_HEADERS))

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *cors]
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _allowed_as(self, origin: bytes, scope: Scope) -> bytes | None:
        """What `access-control-allow-origin` says to this origin, or None: refused."""
        if self._any:
            return b"*"
        if origin.lower() in self._listed or _same_loopback_host(origin, scope):
            return origin
        return None


def _request_headers(scope: Scope) -> bytes | None:
    """A preflight's `access-control-request-headers` (b"" when it names none), or None
    when the OPTIONS is no preflight."""
    method = headers = None
    for name, value in scope["headers"]:
        if name == b"access-control-request-method":
            method = value
        elif name == b"access-control-request-headers":
            headers = value
    return None if method is None else headers or b""


async def _answer_preflight(
    cors: list[tuple[bytes, bytes]], requested_headers: bytes, send: Send
) -> None:
    """204: the methods the gateway serves, the headers asked for (the origin is trusted:
    the SDKs send their own, `x-stainless-*`, `anthropic-version`, ...)."""
    headers = [
        *cors,
        (b"access-control-allow-methods", ALLOWED_METHODS),
        (b"access-control-max-age", PREFLIGHT_MAX_AGE_S),
        (b"vary", b"access-control-request-method, access-control-request-headers"),
    ]
    if requested_headers:
        headers.append((b"access-control-allow-headers", requested_headers))
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def _same_loopback_host(origin: bytes, scope: Scope) -> bool:
    """The page is served by this very host and port, and that host is the machine
    itself (`localhost`, 127.0.0.0/8, ::1) as the browser named it in `Host`."""
    scheme, sep, authority = origin.decode("latin-1").lower().partition("://")
    if not sep:
        return False
    host = next((value for name, value in scope["headers"] if name == b"host"), None)
    if host is None:
        return False
    page = _host_and_port(authority, _DEFAULT_PORTS.get(scheme))
    served = _host_and_port(host.decode("latin-1").lower(), _DEFAULT_PORTS.get(scope["scheme"]))
    return page is not None and page == served and _is_loopback(page[0])


def _host_and_port(authority: str, default_port: int | None) -> tuple[str, int | None] | None:
    """`host[:port]` (IPv6 in brackets) split; None if malformed."""
    if authority.startswith("["):
        host, sep, port = authority[1:].partition("]")
        if not sep or (port and not port.startswith(":")):
            return None
        port = port[1:]
    else:
        host, _, port = authority.partition(":")
    if not port:
        return host, default_port
    return (host, int(port)) if port.isdigit() else None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
