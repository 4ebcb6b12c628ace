"""The HTTP spelling of the error model: status, headers and body for each error."""

from __future__ import annotations

import math
from typing import Any

import orjson
from starlette.responses import Response

from server import errors

__all__ = ["HTTP_STATUS", "error_body", "error_headers", "error_response", "spelled_ollama"]

HTTP_STATUS: dict[type[errors.GatewayError], int] = {
    errors.InvalidRequestError: 400,
    errors.RequestTooLargeError: 413,
    errors.AuthenticationError: 401,
    errors.PermissionDeniedError: 403,
    errors.NotFoundError: 404,
    errors.RateLimitError: 429,
    errors.UpstreamFailure: 502,
    errors.UpstreamError: 502,
    errors.UpstreamTimeoutError: 504,
    errors.UnavailableError: 503,
    errors.InternalError: 500,
    errors.GatewayError: 500,
}


def spelled_ollama(path: str) -> bool:
    """Errors under /api are spelled as Ollama spells them, whoever answers them."""
    return path.startswith("/api/")


def error_body(error: errors.GatewayError, *, ollama: bool = False) -> dict[str, Any]:
    """`{"error": {...}}` (native and OpenAI), or Ollama's `{"error": "..."}`."""
    if ollama:
        return {"error": error.message}
    return {
        "error": {
            "message": error.message,
            "type": error.type,
            "code": error.code,
            "param": error.param,
        }
    }


def error_headers(error: errors.GatewayError) -> list[tuple[str, str]]:
    """Retry guidance: `Retry-After` on 429, `x-should-retry: false` when retrying is futile."""
    headers = []
    if isinstance(error, errors.RateLimitError):
        headers.append(("retry-after", str(max(math.ceil(error.retry_after_s), 0))))
        headers.append(("retry-after-ms", str(max(math.ceil(error.retry_after_s * 1000), 0))))
        if not error.should_retry:
            headers.append(("x-should-retry", "false"))
    elif isinstance(error, errors.UpstreamFailure):
        headers.append(("x-should-retry", "false"))
    return headers


def error_response(
    error: errors.GatewayError,
    *,
    ollama: bool = False,
    status: int | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> Response:
    response = Response(
        orjson.dumps(error_body(error, ollama=ollama)),
        status_code=status or HTTP_STATUS[type(error)],
        media_type="application/json",
    )
    for name, value in [*(headers or ()), *error_headers(error)]:
        response.headers.append(name, value)
    return response
