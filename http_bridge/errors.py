"""The HTTP spelling of the error model: status, headers and body for each error."""

from __future__ import annotations

import math
from typing import Any, Literal

import orjson
from starlette.responses import Response

from server import errors

__all__ = [
    "HTTP_STATUS",
    "Spelling",
    "error_body",
    "error_headers",
    "error_response",
    "spelling_of",
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


# how a door spells its errors: OpenAI's (native and /v1), Ollama's, Anthropic's
Spelling = Literal["openai", "ollama", "anthropic"]

# Anthropic's error types; the gateway's other failures are its `api_error`
ANTHROPIC_TYPES: dict[type[errors.GatewayError], str] = {
    errors.InvalidRequestError: "invalid_request_error",
    errors.RequestTooLargeError: "request_too_large",
    errors.AuthenticationError: "authentication_error",
    errors.PermissionDeniedError: "permission_error",
    errors.NotFoundError: "not_found_error",
    errors.RateLimitError: "rate_limit_error",
}


def spelling_of(path: str) -> Spelling:
    """Errors under /api are spelled as Ollama spells them and under /v1/messages as
    Anthropic does, whoever answers them (a route, the body limit, the last resort)."""
    if path.startswith("/api/"):
        return "ollama"
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return "anthropic"
    return "openai"


def error_body(error: errors.GatewayError, *, spelling: Spelling = "openai") -> dict[str, Any]:
    """`{"error": {...}}` (native and OpenAI), Ollama's `{"error": "..."}`, or
    Anthropic's `{"type": "error", "error": {"type", "message"}}`."""
    if spelling == "ollama":
        return {"error": error.message}
    if spelling == "anthropic":
        kind = ANTHROPIC_TYPES.get(type(error), "api_error")
        return {"type": "error", "error": {"type": kind, "message": error.message}}
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
    spelling: Spelling = "openai",
    status: int | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> Response:
    response = Response(
        orjson.dumps(error_body(error, spelling=spelling)),
        status_code=status or HTTP_STATUS[type(error)],
        media_type="application/json",
    )
    for name, value in [*(headers or ()), *error_headers(error)]:
        response.headers.append(name, value)
    return response
