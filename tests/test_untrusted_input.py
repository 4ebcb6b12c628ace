"""Input that never breaks the gateway: deep JSON and unstorable strings are 400s
naming the field, on a real `tandem serve`, over HTTP and gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import orjson
import pytest
from google.protobuf.json_format import ParseDict
from tandem.v1 import chat_pb2, chat_pb2_grpc, usage_pb2, usage_pb2_grpc

from tests.rpc_status import details_of
from tests.servers import TandemProcess, start_tandem

MAX_DEPTH = 32  # the contract's: JSON nested deeper is refused on every door
ADMIN_KEY = "untrusted-admin-key-0123456789"

# Where each Struct field sits in a request body: the body is level 1, and the
# field's own object is level `level`, so a value nested n levels deep there
# makes the body level + n - 1 deep.
STRUCT_FIELDS = {
    "tools[0].function.parameters": (
        b'{"model":"echo","messages":[{"role":"user","content":"hi"}],'
        b'"tools":[{"type":"function","function":{"name":"f","parameters":%s}}]}',
        5,
    ),
    "response_format.json_schema.schema": (
        b'{"model":"echo","messages":[{"role":"user","content":"hi"}],'
        b'"response_format":{"type":"json_schema","json_schema":{"name":"s","schema":%s}}}',
        4,
    ),
}
ROUTES = ("/native/v1/chat/completions", "/v1/chat/completions")


def nested(levels: int) -> bytes:
    """`{"a":{"a":...{}}}`, `levels` objects deep (orjson refuses to write it)."""
    return b'{"a":' * (levels - 1) + b"{}" + b"}" * (levels - 1)


def body_with(field: str, depth: int) -> bytes:
    """A chat request whose whole body is `depth` levels deep, the deepest in `field`."""
    template, level = STRUCT_FIELDS[field]
    return template % nested(depth - level + 1)


def new_lines(gateway: TandemProcess, before: int) -> list[str]:
    """What was logged since `before`, besides the access lines (one per request)."""
    lines = gateway.settled_stderr().splitlines()[before:]
    return [line for line in lines if '"event":"request"' not in line]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TandemProcess]:
    process = start_tandem(tmp_path_factory.mktemp("untrusted"), "usage: {store: none}\n")
    yield process
    assert process.terminate() == 0, process.stderr()


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("field", STRUCT_FIELDS)
@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 500, 1000])
def test_json_nested_deeper_than_32_is_a_400_naming_the_path(
    gateway: TandemProcess, route: str, field: str, depth: int
) -> None:
    before = len(gateway.stderr().splitlines())
    body = body_with(field, depth)
    response = httpx.post(f"{gateway.base_url}{route}", content=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    # the container at level 33, named as the strict parser names fields, cut to 256
    _, level = STRUCT_FIELDS[field]
    full_path = field + ".a" * (MAX_DEPTH + 1 - level)
    assert error["param"] == full_path[:256]
    assert error["message"] == f"{full_path[:256]}: JSON nested deeper than 32 levels"
    lines = new_lines(gateway, before)
    assert len(lines) <= 1, lines
    assert not any("Recursion" in line or "Traceback" in line for line in lines), lines


def test_json_deeper_than_the_decoder_goes_is_a_400_naming_the_body(
    gateway: TandemProcess,
) -> None:
    body = b'{"messages":' + b"[" * 2000 + b"]" * 2000 + b"}"
    response = httpx.post(f"{gateway.base_url}/v1/chat/completions", content=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "body"
    assert "nested deeper than 32 levels" in response.json()["error"]["message"]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("field", STRUCT_FIELDS)
async def test_json_exactly_32_deep_is_served_over_http_and_grpc(
    gateway: TandemProcess, route: str, field: str
) -> None:
    body = body_with(field, MAX_DEPTH)
    async with httpx.AsyncClient(base_url=gateway.base_url) as client:
        response = await client.post(route, content=body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "hi"

    # what HTTP accepts, gRPC can carry (its runtime stops at ~33 levels of Struct)
    request = ParseDict(orjson.loads(body), chat_pb2.ChatCompletionRequest())
    async with grpc.aio.insecure_channel(gateway.grpc) as channel:
        answer = await chat_pb2_grpc.ChatServiceStub(channel).CreateChatCompletion(request)
    assert answer.choices[0].message.content == "hi"


async def test_a_struct_too_deep_for_the_grpc_runtime_is_invalid_argument(
    gateway: TandemProcess,
) -> None:
    request = chat_pb2.ChatCompletionRequest(model="echo")
    request.messages.add(role="user", content="hi")
    tool = request.tools.add(type="function")
    tool.function.name = "f"
    tool.function.parameters.update(orjson.loads(nested(34)))  # 33 parse; 34 do not
    async with grpc.aio.insecure_channel(gateway.grpc) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateChatCompletion(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- usage filters no store can take ---------------------------------------------------


@pytest.fixture
def usage_gateway(tmp_path: Path, store_url: str) -> Iterator[TandemProcess]:
    config = f'auth: {{admin_keys: ["{ADMIN_KEY}"]}}\nusage: {{store: "{store_url}"}}\n'
    process = start_tandem(tmp_path, config)
    yield process
    assert process.terminate() == 0, process.stderr()


@pytest.mark.parametrize("param", ["model", "user"])
async def test_a_nul_in_a_usage_filter_is_a_400_naming_it_on_both_doors(
    usage_gateway: TandemProcess, param: str
) -> None:
    admin = f"Bearer {ADMIN_KEY}"
    async with httpx.AsyncClient(base_url=usage_gateway.base_url) as client:
        for credential in (admin, None):  # an admin's filter, and a caller's own
            headers = {"authorization": credential} if credential else {}
            response = await client.get(
                "/native/v1/usage", params={param: "echo\x00"}, headers=headers
            )
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert (error["type"], error["param"]) == ("invalid_request_error", param)
        ok = await client.get(
            "/native/v1/usage", params={param: "echo"}, headers={"authorization": admin}
        )
        assert ok.status_code == 200, ok.text

    async with grpc.aio.insecure_channel(usage_gateway.grpc) as channel:
        stub = usage_pb2_grpc.UsageServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            request = usage_pb2.GetUsageRequest()
            setattr(request, param, "echo\x00")
            await stub.GetUsage(request, metadata=(("authorization", admin),))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = details_of(caught.value)
    assert details.bad_request is not None
    assert [v.field for v in details.bad_request.field_violations] == [param]
    assert "Traceback" not in usage_gateway.settled_stderr()
