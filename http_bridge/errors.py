"""The HTTP spelling of the error model: status, headers and body for each error."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import orjson
from starlette.responses import Response

from server import errors

__all__ = [
    "HTTP_STATUS",
    "ErrorBody",
    "anthropic_error_body",
    "error_headers",
    "error_response",
    "ollama_error_body",
    "openai_error_body",
]

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


# Anthropic's error types; the gateway's other failures are its `api_error`
ANTHROPIC_TYPES: dict[type[errors.GatewayError], str] = {
    errors.InvalidRequestError: "invalid_request_error",
    errors.RequestTooLargeError: "request_too_large",
    errors.AuthenticationError: "authentication_error",
    errors.PermissionDeniedError: "permission_error",
    errors.NotFoundError: "not_found_error",
    errors.RateLimitError: "rate_limit_error",
}


# how an error is written: one body per API's shape; a door's record names its own
# (http_bridge/doors.py), and a path that is no door's is answered in OpenAI's
ErrorBody = Callable[[errors.GatewayError], dict[str, Any]]


def openai_error_body(error: errors.GatewayError) -> dict[str, Any]:
    """`{"error": {"message", "type", "code", "param"}}`: native's and OpenAI's."""
    return {
        "error": {
            "message": error.message,
            "type": error.type,
            "code": error.code,
            "param": error.param,
        }
    }


def ollama_error_body(error: errors.GatewayError) -> dict[str, Any]:
    """`{"error": "..."}`, as Ollama writes it."""
    return {"error": error.message}


def anthropic_error_body(error: errors.GatewayError) -> dict[str, Any]:
    """`{"type": "error", "error": {"type", "message"}}`, in Anthropic's types."""
    kind = ANTHROPIC_TYPES.get(type(error), "api_error")
    return {"type": "error", "error": {"type": kind, "message": error.message}}


def error_headers(error: errors.GatewayError) -> list[tuple[str, str]]:
    """Retry guidance: `Retry-After` on 429, `x-should-retry: false` when retrying is futile."""
    headers = []
    if isinstance(error, errors.RateLimitError) and error.retry_after_s is not None:
        headers.append(("retry-after", str(max(math.ceil(error.retry_after_s), 0))))
        ms = max(math.ceil(error.retry_after_s * 1000), 0)
        headers.append(("retry-after-ms", str(ms)))
    if errors.retrying_is_futile(error):
        headers.append(("x-should-retry", "false"))
    return headers


def error_response(
    error: errors.GatewayError,
    *,
    spelling: ErrorBody = openai_error_body,
    status: int | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> Response:
    response = Response(
        orjson.dumps(spelling(error)),
        status_code=status or HTTP_STATUS[type(error)],
        media_type="application/json",
    )
    for name, value in [*(headers or ()), *error_headers(error)]:
        response.headers.append(name, value)
    return response
