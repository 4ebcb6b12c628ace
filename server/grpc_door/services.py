"""The gRPC door's services: each method is one line handing its call to the data plane,
through the wrapper (rpc.py) that opens, answers and reports it."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tandem.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    chat_pb2,
    chat_pb2_grpc,
    embeddings_pb2,
    embeddings_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)

from server.chunks import Batch, Chunk, stamped
from server.context import CallContext
from server.core.admin import KeyAdmin
from server.core.dataplane import DataPlane
from server.drain import DrainClock
from server.errors import NotFoundError
from server.grpc_door.decode import add_service
from server.grpc_door.rpc import Servicer, stream_rpc, unary_rpc
from server.policy import Policy
from server.telemetry import Telemetry
from server.translate.common import check_schema_texts

__all__ = ["SERVICE_NAMES", "build_grpc_server"]


class ChatService(Servicer, chat_pb2_grpc.ChatServiceServicer, proto=chat_pb2):
    @unary_rpc
    async def CreateChatCompletion(
        self, request: chat_pb2.ChatCompletionRequest, ctx: CallContext
    ) -> chat_pb2.ChatCompletion:
        check_schema_texts(request)
        return await self.plane.create_chat(request, ctx)

    @stream_rpc
    def StreamChatCompletion(
        self, request: chat_pb2.ChatCompletionRequest, ctx: CallContext
    ) -> AsyncGenerator[list[Chunk], None]:
        check_schema_texts(request)
        return _whole_chunks(self.plane.stream_chat(request, ctx))


async def _whole_chunks(
    batches: AsyncGenerator[Batch, None],
) -> AsyncGenerator[list[Chunk], None]:
    """Every text item as the whole chunk it stands for (server/chunks.py): gRPC sends
    each with the id, time and model of the first, which is always a chunk."""
    head: Chunk | None = None
    try:
        async for batch in batches:
            if head is None:
                first = batch[0]
                assert not isinstance(first, str)
                head = first
            yield [stamped(item, head) if isinstance(item, str) else item for item in batch]
    finally:
        await batches.aclose()


class ModelService(Servicer, models_pb2_grpc.ModelServiceServicer, proto=models_pb2):
    @unary_rpc
    async def ListModels(
        self, request: models_pb2.ListModelsRequest, ctx: CallContext
    ) -> models_pb2.ListModelsResponse:
        return await self.plane.list_models(ctx)

    @unary_rpc
    async def GetModel(
        self, request: models_pb2.GetModelRequest, ctx: CallContext
    ) -> models_pb2.Model:
        return await self.plane.get_model(request.id, ctx)


class EmbeddingService(
    Servicer, embeddings_pb2_grpc.EmbeddingServiceServicer, proto=embeddings_pb2
):
    @unary_rpc
    async def CreateEmbeddings(
        self, request: embeddings_pb2.EmbeddingRequest, ctx: CallContext
    ) -> embeddings_pb2.EmbeddingResponse:
        return await self.plane.embed(request, ctx)


class UsageService(Servicer, usage_pb2_grpc.UsageServiceServicer, proto=usage_pb2):
    @unary_rpc
    async def GetUsage(
        self, request: usage_pb2.GetUsageRequest, ctx: CallContext
    ) -> usage_pb2.GetUsageResponse:
        return await self.plane.get_usage(request, ctx)


class AdminService(Servicer, admin_pb2_grpc.AdminServiceServicer, proto=admin_pb2):
    """Keys and spend, for admin keys only: the handlers `/admin/v1` calls too."""

    admin: KeyAdmin | None = None  # given by `build_grpc_server`

    @property
    def handlers(self) -> KeyAdmin:
        if self.admin is None:
            raise NotFoundError("no admin API here")
        return self.admin

    @unary_rpc
    async def CreateKey(
        self, request: admin_pb2.CreateKeyRequest, ctx: CallContext
    ) -> admin_pb2.Key:
        return await self.handlers.create_key(request, ctx)

    @unary_rpc
    async def GetKey(self, request: admin_pb2.GetKeyRequest, ctx: CallContext) -> admin_pb2.Key:
        return await self.handlers.get_key(request, ctx)

    @unary_rpc
    async def ListKeys(
        self, request: admin_pb2.ListKeysRequest, ctx: CallContext
    ) -> admin_pb2.ListKeysResponse:
        return await self.handlers.list_keys(request, ctx)

    @unary_rpc
    async def UpdateKey(
        self, request: admin_pb2.UpdateKeyRequest, ctx: CallContext
    ) -> admin_pb2.Key:
        return await self.handlers.update_key(request, ctx)

    @unary_rpc
    async def RevokeKey(
        self, request: admin_pb2.RevokeKeyRequest, ctx: CallContext
    ) -> admin_pb2.Key:
        return await self.handlers.revoke_key(request, ctx)

    @unary_rpc
    async def GetSpend(
        self, request: admin_pb2.GetSpendRequest, ctx: CallContext
    ) -> admin_pb2.GetSpendResponse:
        return await self.handlers.get_spend(request, ctx)


SERVICES = (ChatService, ModelService, EmbeddingService, UsageService, AdminService)
SERVICE_NAMES = tuple(servicer.descriptor.full_name for servicer in SERVICES)


def build_grpc_server(
    plane: DataPlane,
    policy: Policy,
    health_servicer: health.aio.HealthServicer,
    telemetry: Telemetry,
    *,
    max_message_bytes: int,
    max_concurrent_rpcs: int,
    reuse_port: bool = False,
    drain: DrainClock | None = None,
    write_timeout_s: float = 30.0,
    admin: KeyAdmin | None = None,
) -> grpc.aio.Server:
    """A grpc.aio server with every service, health and reflection; not yet bound.

    `max_message_bytes` bounds the messages that come in; answers are not capped.
    A call cancelled once `drain` is over is reported UNAVAILABLE.
    """
    drain = drain or DrainClock()
    options: Sequence[tuple[str, Any]] = (
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", -1),  # the limit is for what comes in
        ("grpc.so_reuseport", int(reuse_port)),
    )
    server = grpc.aio.server(options=options, maximum_concurrent_rpcs=max_concurrent_rpcs)
    for servicer in SERVICES:
        door = servicer(plane, policy, telemetry, drain, write_timeout_s)
        if isinstance(door, AdminService):
            door.admin = admin
        add_service(server, servicer.descriptor, door)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            *SERVICE_NAMES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    return server
