"""Reading the google.rpc.Status details of a failed call."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2

__all__ = ["StatusDetails", "details_of", "error_info_of"]


@dataclass
class StatusDetails:
    code: int
    message: str
    error_info: error_details_pb2.ErrorInfo | None
    bad_request: error_details_pb2.BadRequest | None
    retry_info: error_details_pb2.RetryInfo | None


def details_of(error: grpc.aio.AioRpcError) -> StatusDetails:
    raw = next(
        value for key, value in error.trailing_metadata() or () if key == "grpc-status-details-bin"
    )
    assert isinstance(raw, bytes)
    status = status_pb2.Status.FromString(raw)
    found: dict[str, object] = {}
    for detail in status.details:
        for kind in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.RetryInfo,
        ):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found[kind.__name__] = message
    return StatusDetails(
        code=status.code,
        message=status.message,
        error_info=found.get("ErrorInfo"),
        bad_request=found.get("BadRequest"),
        retry_info=found.get("RetryInfo"),
    )


def error_info_of(
    error: grpc.aio.AioRpcError, code: grpc.StatusCode, reason: str
) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo of a call that failed, checked to be `code` and to name `reason`."""
    assert error.code() == code, error
    info = details_of(error).error_info
    assert info is not None
    assert info.reason == reason
    return info
