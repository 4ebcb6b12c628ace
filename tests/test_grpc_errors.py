"""The error model over gRPC: status codes with google.rpc.Status details."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from google.protobuf.json_format import ParseDict
from tandem.v1 import chat_pb2, chat_pb2_grpc

from tests.grpc_in_process import grpc_channel
from tests.in_process import SECRET, BrokenProvider, plane_over
from tests.rpc_status import details_of
from tests.servers import TandemProcess


def chat(**fields: object) -> chat_pb2.ChatCompletionRequest:
    body = {"messages": [{"role": "user", "content": "hi"}], **fields}
    return ParseDict(body, chat_pb2.ChatCompletionRequest())


async def fail(
    call: Callable[[], object],
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call()  # type: ignore[misc]
    return caught.value


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 0}, "n"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"tool_choice": {"mode": "sometimes"}}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"logit_bias": {"50256": 101}}, "logit_bias.50256"),
    ],
)
async def test_invalid_request_is_invalid_argument_naming_the_field(
    channel: grpc.aio.Channel, fields: dict[str, object], param: str
) -> None:
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    error = await fail(lambda: stub.CreateChatCompletion(chat(model="echo", **fields)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert param in (error.details() or "")
    details = details_of(error)
    assert details.error_info is not None
    assert details.error_info.reason == "invalid_request_error"
    assert details.bad_request is not None
    assert [v.field for v in details.bad_request.field_violations] == [param]


async def test_stream_errors_before_the_first_chunk_are_plain_statuses(
    channel: grpc.aio.Channel,
) -> None:
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    call = stub.StreamChatCompletion(chat(model="echo", temperature=9.0))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pytest.fail("no chunk expected")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_unknown_model_is_not_found_with_error_info(channel: grpc.aio.Channel) -> None:
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    error = await fail(lambda: stub.CreateChatCompletion(chat(model="gpt-nothing")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    details = details_of(error)
    assert details.error_info is not None
    assert details.error_info.reason == "not_found_error"
    assert details.error_info.metadata["code"] == "model_not_found"


async def test_model_outside_the_tier_is_permission_denied(channel: grpc.aio.Channel) -> None:
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    error = await fail(lambda: stub.StreamChatCompletion(chat(model="private")).read())
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    details = details_of(error)
    assert details.error_info is not None
    assert details.error_info.reason == "permission_error"


async def test_message_over_max_body_bytes_is_resource_exhausted(
    channel: grpc.aio.Channel,
) -> None:
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    error = await fail(lambda: stub.CreateChatCompletion(chat(model="echo", user="u" * 70_000)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_unknown_method_is_unimplemented(channel: grpc.aio.Channel) -> None:
    method: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        "/tandem.v1.ChatService/Nope"
    )
    error = await fail(lambda: method(b""))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_auth_required_without_credentials_is_unauthenticated(
    tandem: Callable[..., TandemProcess],
) -> None:
    server = tandem("auth: {required: true}\n")
    async with grpc.aio.insecure_channel(server.grpc) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        error = await fail(lambda: stub.CreateChatCompletion(chat()))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        details = details_of(error)
        assert details.error_info is not None
        assert details.error_info.reason == "authentication_error"
        metadata = [("authorization", "Bearer not-a-valid-token")]
        error = await fail(lambda: stub.CreateChatCompletion(chat(), metadata=metadata))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_bug_is_internal_with_nothing_leaked(caplog: pytest.LogCaptureFixture) -> None:
    plane = plane_over(BrokenProvider())
    async with grpc_channel(plane, plane.policy) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        for call in (stub.CreateChatCompletion, stub.StreamChatCompletion):
            error = await fail(lambda call=call: _consume(call(chat())))  # type: ignore[misc]
            assert error.code() == grpc.StatusCode.INTERNAL
            assert error.details() == "internal error"
            assert "secret" not in str(error.trailing_metadata())
            details = details_of(error)
            assert details.error_info is not None
            assert details.error_info.reason == "internal_error"
    assert SECRET in caplog.text


async def _consume(call: object) -> None:
    if hasattr(call, "__aiter__"):
        async for _ in call:
            pass
    else:
        await call  # type: ignore[misc]
