"""ModelService and EmbeddingService over a real channel."""

from __future__ import annotations

import math

import grpc
import pytest
from tandem.v1 import embeddings_pb2, embeddings_pb2_grpc, models_pb2, models_pb2_grpc


async def test_list_models_shows_the_models_the_tier_may_use(channel: grpc.aio.Channel) -> None:
    stub = models_pb2_grpc.ModelServiceStub(channel)
    response = await stub.ListModels(models_pb2.ListModelsRequest())
    assert [(m.id, m.owned_by) for m in response.data] == [
        ("echo", "demo"),
        ("slow-echo", "slow"),
        ("org/echo-2", "demo"),
    ]
    assert all(m.created > 1_700_000_000 for m in response.data)
    # a model's own price, in decimal strings (absent cache prices: the input price); the
    # mock models without one are unpriced
    assert [m.HasField("price") for m in response.data] == [False, False, True]
    assert response.data[2].price == models_pb2.Price(
        input_per_mtok="0.15",
        output_per_mtok="0.6",
        cached_input_per_mtok="0.15",
        cache_write_per_mtok="0.15",
    )


async def test_get_model_describes_one(channel: grpc.aio.Channel) -> None:
    stub = models_pb2_grpc.ModelServiceStub(channel)
    model = await stub.GetModel(models_pb2.GetModelRequest(id="slow-echo"))
    assert (model.id, model.owned_by) == ("slow-echo", "slow")


async def test_get_unknown_model_is_not_found(channel: grpc.aio.Channel) -> None:
    stub = models_pb2_grpc.ModelServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetModel(models_pb2.GetModelRequest(id="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_embeddings_are_deterministic_64_dim_unit_vectors(channel: grpc.aio.Channel) -> None:
    stub = embeddings_pb2_grpc.EmbeddingServiceStub(channel)
    req = embeddings_pb2.EmbeddingRequest(
        model="echo", input=["hello world", "other", "hello world"]
    )
    first = await stub.CreateEmbeddings(req)
    second = await stub.CreateEmbeddings(req)
    assert first == second
    assert first.model == "echo"
    assert [e.index for e in first.data] == [0, 1, 2]
    vectors = [list(e.embedding) for e in first.data]
    assert all(len(v) == 64 for v in vectors)
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-5) for v in vectors)
    assert vectors[0] == vectors[2] != vectors[1]
    assert (first.usage.prompt_tokens, first.usage.total_tokens) == (5, 5)


async def test_embeddings_without_input_are_invalid(channel: grpc.aio.Channel) -> None:
    stub = embeddings_pb2_grpc.EmbeddingServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateEmbeddings(embeddings_pb2.EmbeddingRequest(model="echo"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
