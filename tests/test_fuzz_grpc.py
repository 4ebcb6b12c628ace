"""Fuzzing the gRPC door with raw bytes: every RPC of `tandem.v1`, on a live server.

A real grpc.aio channel sends the bytes as they are (no serializer), so the server's
own deserializer meets them. Whatever arrives, the status is OK or one the contract
spells for a client's mistake, never UNKNOWN or INTERNAL, and no detail leaks. The
server is conftest's `shared_server` (a module's own), reached through its `channel`.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import pytest
from google.protobuf.json_format import ParseDict
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st
from tandem.v1 import admin_pb2, chat_pb2, embeddings_pb2, models_pb2, usage_pb2

from tests.fuzzing import INTERNALS, FuzzCases, fuzz_settings
from tests.servers import TandemProcess

# What a client's bytes may earn: success or the contract's statuses for requests.
ALLOWED = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


@dataclass(frozen=True)
class Rpc:
    path: str
    streams: bool
    seeds: tuple[bytes, ...]


def _seeds(message: type[Message], *bodies: dict[str, object]) -> tuple[bytes, ...]:
    return tuple(ParseDict(body, message()).SerializeToString() for body in bodies)


_CHAT = _seeds(
    chat_pb2.ChatCompletionRequest,
    {"model": "echo", "messages": [{"role": "user", "content": "hi there"}]},
    {
        "model": "echo",
        "messages": [{"role": "user", "parts": [{"type": "text", "text": "hi"}]}],
        "max_tokens": 1,
        "stop": ["x"],
        "logit_bias": {"1": 2},
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"a": [1]}}}],
    },
)
SEEDS: dict[str, tuple[bytes, ...]] = {
    chat_pb2.ChatCompletionRequest.DESCRIPTOR.full_name: _CHAT,
    embeddings_pb2.EmbeddingRequest.DESCRIPTOR.full_name: _seeds(
        embeddings_pb2.EmbeddingRequest, {"model": "echo", "input": ["one", "two"]}
    ),
    models_pb2.GetModelRequest.DESCRIPTOR.full_name: _seeds(
        models_pb2.GetModelRequest, {"id": "echo"}
    ),
    models_pb2.ListModelsRequest.DESCRIPTOR.full_name: (b"",),
    usage_pb2.GetUsageRequest.DESCRIPTOR.full_name: _seeds(
        usage_pb2.GetUsageRequest,
        {"since": "2026-01-01T00:00:00Z", "until": "2027-01-01T00:00:00Z", "limit": 5},
    ),
    admin_pb2.CreateKeyRequest.DESCRIPTOR.full_name: _seeds(
        admin_pb2.CreateKeyRequest,
        {"key": {"user": "u", "models": {"names": ["echo"]}, "budget": {"usd": "1.5"}}},
    ),
    admin_pb2.GetKeyRequest.DESCRIPTOR.full_name: _seeds(admin_pb2.GetKeyRequest, {"id": "0" * 12}),
    admin_pb2.ListKeysRequest.DESCRIPTOR.full_name: _seeds(
        admin_pb2.ListKeysRequest, {"user": "u", "page_size": 2, "page_token": "abc"}
    ),
    admin_pb2.UpdateKeyRequest.DESCRIPTOR.full_name: _seeds(
        admin_pb2.UpdateKeyRequest,
        {"key": {"id": "0" * 12, "labels": {"a": "b"}}, "update_mask": "labels,budget"},
    ),
    admin_pb2.RevokeKeyRequest.DESCRIPTOR.full_name: _seeds(
        admin_pb2.RevokeKeyRequest, {"id": "0" * 12}
    ),
    admin_pb2.GetSpendRequest.DESCRIPTOR.full_name: _seeds(
        admin_pb2.GetSpendRequest, {"group_by": "day", "since": "2026-01-01T00:00:00Z"}
    ),
}

RPCS = tuple(
    Rpc(
        f"/{service.full_name}/{method.name}",
        method.server_streaming,
        SEEDS[method.input_type.full_name],
    )
    for module in (chat_pb2, embeddings_pb2, models_pb2, usage_pb2, admin_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
)


@st.composite
def payloads(draw: st.DrawFn, rpc: Rpc) -> bytes:
    """A valid request of `rpc`, mutated: cut, bytes flipped, inserted or spliced; or noise."""
    data = bytearray(draw(st.sampled_from(rpc.seeds)))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["cut", "flip", "insert", "noise"]))
        if action == "cut":
            del data[at:]
        elif action == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            data = bytearray(draw(st.binary(max_size=64)))
    return bytes(data)


async def call(channel: grpc.aio.Channel, rpc: Rpc, payload: bytes) -> tuple[grpc.StatusCode, str]:
    """Send `payload` as it is; the status and its details."""
    try:
        if rpc.streams:
            streaming: grpc.aio.UnaryStreamMultiCallable[bytes, bytes]
            streaming = channel.unary_stream(rpc.path)
            async for _ in streaming(payload, timeout=10):
                pass
        else:
            unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]
            unary = channel.unary_unary(rpc.path)
            await unary(payload, timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def assert_contract_status(payload: bytes, code: grpc.StatusCode, details: str) -> None:
    assert code in ALLOWED, (payload, code, details)
    leaked = INTERNALS.search(details)
    assert leaked is None, (payload, code, details)


@pytest.mark.parametrize("rpc", RPCS, ids=[rpc.path for rpc in RPCS])
@fuzz_settings(max_examples=100)
@given(data=st.data())
async def test_any_bytes_get_a_contract_status_with_no_internals(
    channel: grpc.aio.Channel, fuzz_cases: FuzzCases, rpc: Rpc, data: st.DataObject
) -> None:
    payload = data.draw(payloads(rpc), label="payload")
    fuzz_cases["grpc: raw bytes"] += 1
    assert_contract_status(payload, *await call(channel, rpc, payload))


def _usage(since: Timestamp) -> bytes:
    return usage_pb2.GetUsageRequest(since=since).SerializeToString()


# Bytes that parse no fuzzer is sure to draw: field 1 (`model`, `id`) of bad UTF-8,
# field number 0, and timestamps outside what Timestamp allows.
EDGES = [
    *(
        (rpc, b"\x0a\x01\xff")
        for rpc in RPCS
        if rpc.path.endswith(("Completion", "Embeddings", "GetModel"))
    ),
    *((rpc, b"\x00\x00") for rpc in RPCS),
    *(
        (rpc, _usage(since))
        for rpc in RPCS
        if rpc.path.endswith("GetUsage")
        for since in (
            Timestamp(seconds=5, nanos=1_000_000_000),
            Timestamp(seconds=5, nanos=-1),
            Timestamp(seconds=2**62),
        )
    ),
]


@pytest.mark.parametrize(("rpc", "payload"), EDGES, ids=[f"{r.path}-{p!r}" for r, p in EDGES])
async def test_edge_bytes_get_a_contract_status_with_no_internals(
    channel: grpc.aio.Channel, rpc: Rpc, payload: bytes
) -> None:
    assert_contract_status(payload, *await call(channel, rpc, payload))


def test_the_fuzzed_server_logged_no_traceback(shared_server: TandemProcess) -> None:
    """Runs after the suite above (same module): a logged bug is a failure too."""
    assert "Traceback" not in shared_server.settled_stderr()
