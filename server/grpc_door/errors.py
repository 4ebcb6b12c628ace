"""The gRPC spelling of the error model: status code plus google.rpc.Status details."""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from server import errors

__all__ = ["GRPC_CODES", "retry_trailers", "to_grpc_status"]

GRPC_CODES: dict[type[errors.GatewayError], grpc.StatusCode] = {
    errors.InvalidRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.RequestTooLargeError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.AuthenticationError: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    errors.NotFoundError: grpc.StatusCode.NOT_FOUND,
    errors.RateLimitError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.UpstreamFailure: grpc.StatusCode.UNAVAILABLE,
    errors.UpstreamError: grpc.StatusCode.UNAVAILABLE,
    errors.UpstreamTimeoutError: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.UnavailableError: grpc.StatusCode.UNAVAILABLE,
    errors.InternalError: grpc.StatusCode.INTERNAL,
    errors.GatewayError: grpc.StatusCode.INTERNAL,
}

DOMAIN = "tandem.v1"


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_grpc_status(error: errors.GatewayError) -> grpc.Status:
    """The status to abort with: code, message, and ErrorInfo/BadRequest/RetryInfo details."""
    code = GRPC_CODES[type(error)]
    metadata = {"code": error.code} if error.code else {}
    details = [
        _pack(error_details_pb2.ErrorInfo(reason=error.type, domain=DOMAIN, metadata=metadata))
    ]
    if isinstance(error, errors.InvalidRequestError) and error.param:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=error.param, description=error.message
        )
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    if isinstance(error, errors.RateLimitError) and error.retry_after_s is not None:
        seconds = max(error.retry_after_s, 0.0)
        whole = math.floor(seconds)
        delay = duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(code=code.value[0], message=error.message, details=details)
    assert status.code != code_pb2.OK
    return rpc_status.to_status(status)


def retry_trailers(error: errors.GatewayError) -> tuple[tuple[str, str], ...]:
    """`x-should-retry: false` where asking again cannot help, as HTTP's header says it
    (`errors.retrying_is_futile`); clients read it from the trailers."""
    return (("x-should-retry", "false"),) if errors.retrying_is_futile(error) else ()
