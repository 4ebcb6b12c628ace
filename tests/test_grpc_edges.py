"""The gRPC door at its edges: requests that do not decode, odd timestamps, big answers,
and names too long to echo."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import httpx
import jwt
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from tandem.v1 import chat_pb2, embeddings_pb2, models_pb2, usage_pb2
from tandem.v1.chat_pb2_grpc import ChatServiceStub
from tandem.v1.embeddings_pb2_grpc import EmbeddingServiceStub
from tandem.v1.models_pb2_grpc import ModelServiceStub
from tandem.v1.usage_pb2_grpc import UsageServiceStub

from tests.rpc_status import details_of
from tests.servers import TandemProcess

CHAT = "/tandem.v1.ChatService/"
SECRET = "s" * 40
POLICED = f"""
tiers: {{free: {{default_model: echo, requests_per_minute: 100}}}}
auth: {{required: true, jwt: {{secret: "{SECRET}"}}}}
"""


def varint(value: int) -> bytes:
    out = b""
    while value > 0x7F:
        out += bytes([value & 0x7F | 0x80])
        value >>= 7
    return out + bytes([value])


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: a string, bytes or a nested message."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def number(message: type, name: str) -> int:
    return int(message.DESCRIPTOR.fields_by_name[name].number)  # type: ignore[attr-defined]


def user_message(content: bytes) -> bytes:
    message = field(number(chat_pb2.ChatMessage, "role"), b"user")
    message += field(number(chat_pb2.ChatMessage, "content"), content)
    return field(number(chat_pb2.ChatCompletionRequest, "messages"), message)


def nested_struct(levels: int) -> bytes:
    """A google.protobuf.Struct `{"a": {"a": ... "x"}}`, `levels` Structs deep, written
    by hand: the protobuf runtime refuses to build one deeper than it would parse."""
    value = field(3, b"x")  # Value.string_value
    for _ in range(levels):
        struct = field(1, field(1, b"a") + field(2, value))  # Struct.fields, a map entry
        value = field(5, struct)  # Value.struct_value
    return struct


def tool_with_parameters(parameters: bytes) -> bytes:
    function = field(number(chat_pb2.FunctionDefinition, "name"), b"f")
    function += field(number(chat_pb2.FunctionDefinition, "parameters"), parameters)
    tool = field(number(chat_pb2.Tool, "type"), b"function")
    tool += field(number(chat_pb2.Tool, "function"), function)
    return field(number(chat_pb2.ChatCompletionRequest, "tools"), tool)


UNDECODABLE = {
    "garbage bytes": (b"\xff\xff\xff\xff not a protobuf", None, "not a valid"),
    "invalid UTF-8 in a string": (user_message(b"caf\xc3"), "messages[0].content", "UTF-8"),
    "a Struct nested too deep": (
        user_message(b"hi") + tool_with_parameters(nested_struct(60)),
        "tools[0].function.parameters",
        "deeply",
    ),
}


async def call_raw(
    channel: grpc.aio.Channel,
    method: str,
    body: bytes,
    stream: bool,
    metadata: tuple[tuple[str, str], ...] = (),
) -> None:
    """Send `body` as it is, with no serializer, and read the whole answer."""
    if stream:
        streaming: grpc.aio.UnaryStreamMultiCallable[bytes, bytes]
        streaming = channel.unary_stream(CHAT + method)
        async for _ in streaming(body, metadata=metadata):
            pass
    else:
        unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(CHAT + method)
        await unary(body, metadata=metadata)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize("case", list(UNDECODABLE))
async def test_a_request_that_does_not_decode_is_invalid_argument(
    channel: grpc.aio.Channel, case: str, stream: bool
) -> None:
    body, param, words = UNDECODABLE[case]
    method = "StreamChatCompletion" if stream else "CreateChatCompletion"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call_raw(channel, method, body, stream)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    message = error.details() or ""
    assert words in message
    for internal in ("Error", "upb", "class"):
        assert internal not in message
    details = details_of(error)
    assert details.error_info is not None
    assert details.error_info.reason == "invalid_request_error"
    if param is None:
        assert details.bad_request is None
    else:
        assert details.bad_request is not None
        assert [v.field for v in details.bad_request.field_violations] == [param]


async def test_an_undecodable_request_goes_through_the_policy_first(
    tandem: Callable[..., TandemProcess],
) -> None:
    server = tandem(POLICED)
    garbage = UNDECODABLE["garbage bytes"][0]
    async with grpc.aio.insecure_channel(server.grpc) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call_raw(channel, "CreateChatCompletion", garbage, stream=False)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 300}, SECRET)
        metadata = (("authorization", f"Bearer {token}"),)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call_raw(
                channel, "CreateChatCompletion", garbage, stream=False, metadata=metadata
            )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # an identified caller's rate-limit trailers ride on it, as on every error
    trailers = dict(caught.value.trailing_metadata() or ())
    assert trailers["x-ratelimit-limit-requests"] == "100"


async def test_a_struct_within_the_nesting_limit_decodes(channel: grpc.aio.Channel) -> None:
    body = user_message(b"hi") + tool_with_parameters(nested_struct(20))
    create: grpc.aio.UnaryUnaryMultiCallable[bytes, chat_pb2.ChatCompletion]
    create = channel.unary_unary(
        CHAT + "CreateChatCompletion", response_deserializer=chat_pb2.ChatCompletion.FromString
    )
    answer = await create(body)
    assert answer.choices[0].message.content == "hi"


@pytest.mark.parametrize(
    ("name", "seconds", "nanos"),
    [
        ("since", 1_700_000_000, -5),
        ("since", 1_700_000_000, 1_000_000_000),
        ("until", 1_700_000_000, -1),
        ("until", 1_700_000_000, 2_000_000_000),
    ],
)
async def test_a_timestamp_with_nanos_out_of_range_is_invalid_argument_naming_it(
    channel: grpc.aio.Channel, name: str, seconds: int, nanos: int
) -> None:
    stub = UsageServiceStub(channel)
    request = usage_pb2.GetUsageRequest()
    getattr(request, name).CopyFrom(Timestamp(seconds=seconds, nanos=nanos))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetUsage(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert name in (caught.value.details() or "")
    bad_request = details_of(caught.value).bad_request
    assert bad_request is not None
    assert [v.field for v in bad_request.field_violations] == [name]


async def test_an_answer_larger_than_max_body_bytes_is_sent(
    tandem: Callable[..., TandemProcess],
) -> None:
    # max_body_bytes bounds what comes in; 40 vectors of 64 floats are ~10 kB going out
    server = tandem("server: {max_body_bytes: 8192}\n")
    request = embeddings_pb2.EmbeddingRequest(model="echo", input=[f"input {i}" for i in range(40)])
    async with grpc.aio.insecure_channel(server.grpc) as channel:
        response = await EmbeddingServiceStub(channel).CreateEmbeddings(request)
    assert len(response.data) == 40
    assert response.ByteSize() > 8192


LONG_NAME = "m" * 19_990 + "-tail"


def assert_cut(message: str) -> None:
    assert "m" * 256 in message
    assert "m" * 257 not in message
    assert "-tail" not in message


async def test_a_very_long_unknown_model_is_not_found_over_grpc(
    channel: grpc.aio.Channel,
) -> None:
    chat = ChatServiceStub(channel)
    request = chat_pb2.ChatCompletionRequest(
        model=LONG_NAME, messages=[chat_pb2.ChatMessage(role="user", content="hi")]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await chat.CreateChatCompletion(request)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value.details()
    assert_cut(caught.value.details() or "")
    models = ModelServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await models.GetModel(models_pb2.GetModelRequest(id=LONG_NAME))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value.details()
    assert_cut(caught.value.details() or "")


def test_a_very_long_unknown_model_is_404_over_http(shared_server: TandemProcess) -> None:
    with httpx.Client(base_url=shared_server.base_url) as http:
        chat = http.post(
            "/v1/chat/completions",
            json={"model": LONG_NAME, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert chat.status_code == 404, chat.text
        assert_cut(chat.json()["error"]["message"])
        model = http.get(f"/v1/models/{LONG_NAME}")
        assert model.status_code == 404, model.text
        assert_cut(model.json()["error"]["message"])


def test_a_very_long_unknown_field_is_echoed_cut(shared_server: TandemProcess) -> None:
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], LONG_NAME: 1}
    answer = httpx.post(f"{shared_server.base_url}/native/v1/chat/completions", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert len(error["param"]) <= 257
    assert_cut(error["message"])
