"""Standard gRPC health checking and server reflection."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.json_format import MessageToDict, ParseDict
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.servers import TandemProcess

SERVICES = ("tandem.v1.ChatService", "tandem.v1.ModelService", "tandem.v1.EmbeddingService")


async def test_health_is_serving_overall_and_per_service(channel: grpc.aio.Channel) -> None:
    stub: Any = health_pb2_grpc.HealthStub(channel)  # typeshed's stub lists no methods
    for service in ("", *SERVICES):
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_client_without_local_protos_streams_chat(shared_server: TandemProcess) -> None:
    """Everything below comes from the server: descriptors, message classes, the call."""
    with grpc.insecure_channel(shared_server.grpc) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert set(SERVICES) <= set(database.get_services())
        pool = descriptor_pool.DescriptorPool(database)
        method = pool.FindServiceByName("tandem.v1.ChatService").methods_by_name[
            "StreamChatCompletion"
        ]
        assert method.server_streaming
        request_class = message_factory.GetMessageClass(method.input_type)
        chunk_class = message_factory.GetMessageClass(method.output_type)
        request = ParseDict(
            {"model": "echo", "messages": [{"role": "user", "content": "hi from reflection"}]},
            request_class(),
        )
        call = channel.unary_stream(
            "/tandem.v1.ChatService/StreamChatCompletion",
            request_serializer=request_class.SerializeToString,
            response_deserializer=chunk_class.FromString,
        )
        chunks = [MessageToDict(c, preserving_proto_field_name=True) for c in call(request)]
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == ["hi ", "from ", "reflection"]
    assert [("usage" in c) for c in chunks] == [False, False, True]
    assert chunks[-1]["usage"]["completion_tokens"] == 3
