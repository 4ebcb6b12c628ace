"""The gateway's errors: one class per row of the contract's error table.

    GatewayError
    ├── InvalidRequestError      400  invalid_request_error
    │   └── RequestTooLargeError 413  invalid_request_error
    ├── AuthenticationError      401  authentication_error
    ├── PermissionDeniedError    403  permission_error
    ├── NotFoundError            404  not_found_error
    ├── RateLimitError           429  rate_limit_error
    ├── UpstreamFailure               (a provider failed; the core may retry)
    │   ├── UpstreamError        502  upstream_error
    │   └── UpstreamTimeoutError 504  timeout_error
    ├── UnavailableError         503  unavailable_error (a store the answer needs is down)
    └── InternalError            500  internal_error

The HTTP status and gRPC code of each class live in one table per door
(`http_bridge/errors.py`, `server/grpc_door/errors.py`). Messages are written for
clients: they never carry upstream URLs, keys or tracebacks, and a name they
echo (a model, a field path, a tier) goes through `echoed`.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "GatewayError",
    "InternalError",
    "InvalidRequestError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTooLargeError",
    "UnavailableError",
    "UpstreamError",
    "UpstreamFailure",
    "UpstreamTimeoutError",
    "echoed",
    "retrying_is_futile",
]

ECHO_LIMIT = 256  # characters of a client's name an error repeats


def echoed(name: str) -> str:
    """`name` cut to ECHO_LIMIT characters, "…" marking a cut: a gRPC message travels
    in metadata, whose limit a 20,000-character model name would break."""
    return name if len(name) <= ECHO_LIMIT else name[:ECHO_LIMIT] + "…"


class GatewayError(Exception):
    """An error with a place in the contract's table."""

    type = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InvalidRequestError(GatewayError):
    type = "invalid_request_error"


class RequestTooLargeError(InvalidRequestError):
    pass


class AuthenticationError(GatewayError):
    type = "authentication_error"


class PermissionDeniedError(GatewayError):
    type = "permission_error"


class NotFoundError(GatewayError):
    type = "not_found_error"


class RateLimitError(GatewayError):
    """`retry_after_s`: when to retry (None: not within any wait, as a `total` budget
    spent); `should_retry`: False when retrying as it is cannot help."""

    type = "rate_limit_error"

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float | None,
        should_retry: bool = True,
        code: str = "rate_limit_exceeded",
    ):
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s
        self.should_retry = should_retry


class UpstreamFailure(GatewayError):
    """A provider failed. `retryable`: the same route may succeed if asked again
    (connect errors, timeouts before the first byte, 408, 429, 5xx);
    `retry_after_s`: the upstream's own `retry-after`, if it sent one."""

    def __init__(
        self, message: str, *, retryable: bool = False, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class UpstreamError(UpstreamFailure):
    type = "upstream_error"


class UpstreamTimeoutError(UpstreamFailure):
    """`sent`: the request had reached the upstream (it timed out waiting for an
    answer, not for a connection), so the upstream may have read its prompt."""

    type = "timeout_error"

    def __init__(self, message: str, *, retryable: bool = False, sent: bool = False) -> None:
        super().__init__(message, retryable=retryable)
        self.sent = sent


class UnavailableError(GatewayError):
    """A store the answer needs is down (an uncached key lookup, a usage read);
    the request may succeed once it is back."""

    type = "unavailable_error"


class InternalError(GatewayError):
    type = "internal_error"


def retrying_is_futile(error: GatewayError) -> bool:
    """Whether asking again as it is cannot help (`x-should-retry: false`, a header on
    HTTP and a trailer on gRPC): a call that could never fit its limits or budget, or an
    upstream that failed after the gateway's own retries and fallbacks."""
    return isinstance(error, UpstreamFailure) or (
        isinstance(error, RateLimitError) and not error.should_retry
    )
