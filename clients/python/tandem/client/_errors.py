"""Typed errors, read from a failed call's status and its `google.rpc.Status` details.

The gateway sends one ErrorInfo (`reason`: the error's type, `metadata["code"]`: its
code, e.g. `budget_exceeded`), a BadRequest naming the field of an invalid request, and
a RetryInfo on a 429; its initial metadata carries `x-request-id` and its trailers
`x-should-retry: false` when retrying cannot help. A failure with no details (the
server unreachable, the client's own deadline) is typed by its status code alone.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from typing import Any, ClassVar, Protocol

import grpc
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "BudgetExceededError",
    "InternalServerError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "TandemError",
    "TimeoutError",
    "UnavailableError",
    "UpstreamError",
    "UpstreamTimeoutError",
    "error_from",
]

Metadata = Iterable[tuple[str, str | bytes]]


class TandemError(Exception):
    """The gateway refused or failed a call (or could not be reached).

    `code`: the gRPC status; `type`: the error's type (`rate_limit_error`, ...: the
    ErrorInfo reason, else the class's own); `error_code`: the finer code where the
    gateway sent one (`budget_exceeded`, `model_not_found`, ...); `param`: the field of
    an invalid request; `request_id`: the gateway's id of the call (quote it in a bug
    report); `trailers`: the call's trailing metadata (`x-ratelimit-*`, ...)."""

    default_type: ClassVar[str] = ""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        type: str | None = None,  # the field's name on every door
        error_code: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
        trailers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.type = type or self.default_type
        self.error_code = error_code
        self.param = param
        self.request_id = request_id
        self.trailers = trailers or {}

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}" if self.code is not None else self.message


class BadRequestError(TandemError):
    """The request is malformed or asks what its model cannot do (INVALID_ARGUMENT)."""

    default_type = "invalid_request_error"


class AuthenticationError(TandemError):
    """No key, or one the gateway does not know (UNAUTHENTICATED)."""

    default_type = "authentication_error"


class PermissionDeniedError(TandemError):
    """The key may not do this: revoked or expired, a model outside its tier, an admin
    call on a non-admin key (PERMISSION_DENIED)."""

    default_type = "permission_error"


class NotFoundError(TandemError):
    """An unknown model, key or method (NOT_FOUND, UNIMPLEMENTED)."""

    default_type = "not_found_error"


class RateLimitError(TandemError):
    """A rate limit refused the call (RESOURCE_EXHAUSTED). `retry_after`: seconds until it
    may fit (the RetryInfo), None when the gateway named no time; `should_retry`: False
    when asking again cannot help (the call could never fit its limits)."""

    default_type = "rate_limit_error"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        should_retry: bool = True,
        **fields: Any,
    ) -> None:
        super().__init__(message, **fields)
        self.retry_after = retry_after
        self.should_retry = should_retry


class BudgetExceededError(RateLimitError):
    """A spend budget has no room for the call: `retry_after` is when its period resets
    (None for a `total` budget). Never retried."""


class UpstreamError(TandemError):
    """The model's provider failed, after the gateway's own retries and fallbacks
    (UNAVAILABLE `upstream_error`). Not retried: the gateway already did."""

    default_type = "upstream_error"


class UpstreamTimeoutError(UpstreamError):
    """The provider did not answer in time (DEADLINE_EXCEEDED `timeout_error`)."""

    default_type = "timeout_error"


class UnavailableError(TandemError):
    """The gateway could not be reached, or a store it needs is down (UNAVAILABLE)."""

    default_type = "unavailable_error"


class InternalServerError(TandemError):
    """A bug in the gateway (INTERNAL)."""

    default_type = "internal_error"


class TimeoutError(TandemError, builtins.TimeoutError):
    """The call's deadline (`timeout`, the client's or the call's) passed: the client
    gave up. Also a built-in `TimeoutError`."""

    default_type = "deadline_exceeded"


_BY_TYPE: dict[str, type[TandemError]] = {
    cls.default_type: cls
    for cls in (
        BadRequestError,
        AuthenticationError,
        PermissionDeniedError,
        NotFoundError,
        RateLimitError,
        UpstreamError,
        UpstreamTimeoutError,
        UnavailableError,
        InternalServerError,
    )
}

_BY_CODE: dict[grpc.StatusCode, type[TandemError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: BadRequestError,
    grpc.StatusCode.OUT_OF_RANGE: BadRequestError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNIMPLEMENTED: NotFoundError,
    # with no ErrorInfo, gRPC's own: a message over the size limit
    grpc.StatusCode.RESOURCE_EXHAUSTED: BadRequestError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: TimeoutError,
    grpc.StatusCode.INTERNAL: InternalServerError,
}


class FailedCall(Protocol):
    """What a failed call says of itself: a sync `grpc.RpcError` (which is a `grpc.Call`)
    or a `grpc.aio.AioRpcError`."""

    def code(self) -> grpc.StatusCode: ...
    def details(self) -> str | None: ...


def error_from(
    call: FailedCall,
    initial: Metadata | None,
    trailing: Metadata | None,
    *,
    request_id: str | None = None,
) -> TandemError:
    """The typed error of a failed call, from its code, message and metadata."""
    code = call.code()
    message = call.details() or code.name
    trailers = {key: value for key, value in trailing or () if isinstance(value, str)}
    status = _status(trailing)
    info = _unpacked(status, error_details_pb2.ErrorInfo)
    reason = str(info.reason) if info is not None else ""
    error_code = (
        str(info.metadata["code"]) if info is not None and "code" in info.metadata else None
    )
    bad_request = _unpacked(status, error_details_pb2.BadRequest)
    violations = list(bad_request.field_violations) if bad_request is not None else []
    fields: dict[str, Any] = {
        "code": code,
        "type": reason or None,
        "error_code": error_code,
        "param": str(violations[0].field) if violations else None,
        "request_id": _request_id(initial) or request_id,
        "trailers": trailers,
    }
    cls = _BY_TYPE.get(reason) or _BY_CODE.get(code, TandemError)
    if cls is RateLimitError:
        retry = _unpacked(status, error_details_pb2.RetryInfo)
        delay = retry.retry_delay if retry is not None else None
        return (BudgetExceededError if error_code == "budget_exceeded" else RateLimitError)(
            message,
            retry_after=None if delay is None else int(delay.seconds) + int(delay.nanos) / 1e9,
            should_retry=trailers.get("x-should-retry") != "false",
            **fields,
        )
    return cls(message, **fields)


def _request_id(metadata: Metadata | None) -> str | None:
    for key, value in metadata or ():
        if key == "x-request-id":
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


def _status(trailing: Metadata | None) -> Any:
    for key, value in trailing or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except Exception:  # a proxy's garbage: typed by the code alone
                return None
    return None


def _unpacked(status: Any, kind: Any) -> Any:
    """The first detail of `kind` in `status`, unpacked, or None."""
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            return message
    return None
