"""The gateway's errors as gRPC statuses: every class has a code (and an HTTP status), and
a rate limit carries its RetryInfo (over a real channel: tests/test_grpc_errors.py)."""

from __future__ import annotations

import grpc

from server import errors
from server.grpc_door.errors import GRPC_CODES, to_grpc_status


def all_error_classes() -> set[type[errors.GatewayError]]:
    found, todo = set(), [errors.GatewayError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo += cls.__subclasses__()
    return found


def test_every_error_class_has_a_grpc_code_and_an_http_status() -> None:
    from http_bridge.errors import HTTP_STATUS

    assert all_error_classes() == set(GRPC_CODES) == set(HTTP_STATUS)


def test_rate_limit_status_carries_retry_info() -> None:
    status = to_grpc_status(errors.RateLimitError("slow down", retry_after_s=1.25))
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    from google.rpc import error_details_pb2, status_pb2

    raw = dict(status.trailing_metadata)["grpc-status-details-bin"]
    assert isinstance(raw, bytes)
    details = status_pb2.Status.FromString(raw).details
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in details if d.Is(retry.DESCRIPTOR))
    assert (retry.retry_delay.seconds, retry.retry_delay.nanos) == (1, 250_000_000)
