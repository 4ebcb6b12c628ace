"""Each model's price in the listing, on a live server, over both doors: a model's own
price, genai-prices' (by `price_provider`, by the provider's URL, by its kind) as decimal
strings on gRPC and exact JSON numbers on `/native/v1/models`, unpriced models without
one; and the start log names the price data and each model's source."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import grpc
import httpx
import orjson
from tandem.v1 import models_pb2, models_pb2_grpc

from tests.servers import TandemProcess

CONFIG = """
providers:
  - {name: demo, kind: mock}
  - {name: as-openai, kind: mock, price_provider: openai}
  - {name: groq, kind: openai, base_url: "http://127.0.0.1:9/openai/v1", price_provider: groq}
  - {name: claude, kind: anthropic, base_url: "http://127.0.0.1:9"}
  - {name: lab, kind: ollama, base_url: "http://127.0.0.1:9"}
models:
  - {name: echo, provider: demo}
  - {name: mini, provider: as-openai, upstream: gpt-4o-mini}
  - {name: llama, provider: groq, upstream: llama-3.3-70b-versatile}
  - {name: haiku, provider: claude, upstream: claude-haiku-4-5-20251001}
  - {name: local, provider: lab, upstream: "llama3.2:1b"}
  - name: own
    provider: lab
    upstream: "llama3.2:1b"
    price: {input_per_mtok: 0.1, output_per_mtok: "0.30", cache_write_per_mtok: 1e-1}
tiers:
  free: {default_model: echo}
"""

PRICES = {
    "echo": None,
    "mini": ("0.15", "0.6", "0.075", "0.15"),  # cache writes: the input price
    "llama": ("0.59", "0.79", "0.59", "0.59"),
    "haiku": ("1", "5", "0.1", "1.25"),
    "local": None,
    "own": ("0.1", "0.3", "0.1", "0.1"),
}
FIELDS = ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok", "cache_write_per_mtok")


async def test_both_doors_list_each_models_price(tandem: Callable[..., TandemProcess]) -> None:
    server = tandem(CONFIG)
    async with grpc.aio.insecure_channel(server.grpc) as channel:
        stub = models_pb2_grpc.ModelServiceStub(channel)
        listed = await stub.ListModels(models_pb2.ListModelsRequest())
        one = await stub.GetModel(models_pb2.GetModelRequest(id="haiku"))
    by_grpc = {
        m.id: tuple(getattr(m.price, f) for f in FIELDS) if m.HasField("price") else None
        for m in listed.data
    }
    assert by_grpc == PRICES
    assert tuple(getattr(one.price, f) for f in FIELDS) == PRICES["haiku"]

    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        body = (await http.get("/native/v1/models")).content
        openai = (await http.get("/v1/models")).json()["data"]
    models = orjson.loads(body)["data"]
    assert {m["id"]: m["price"] for m in models if m["price"] is None} == {
        "echo": None,
        "local": None,
    }
    # JSON numbers, exact: read as decimals they are the strings the gRPC door sends
    assert b'"input_per_mtok":0.15,' in body
    exact = {
        m["id"]: tuple(str(m["price"][f]) for f in FIELDS)
        for m in _decimal_json(body)["data"]
        if m["price"] is not None
    }
    assert exact == {name: price for name, price in PRICES.items() if price is not None}
    # OpenAI's listing keeps OpenAI's shape
    assert all("price" not in m for m in openai)

    logged = [orjson.loads(line) for line in server.settled_stderr().splitlines()]
    prices = next(m for line in logged if (m := line.get("message", "")).startswith("prices: "))
    assert prices == (
        "prices: genai-prices 0.2.3; echo (unpriced), mini (genai-prices openai/gpt-4o-mini), "
        "llama (genai-prices groq/llama-3.3-70b-versatile), "
        "haiku (genai-prices anthropic/claude-haiku-4-5), local (unpriced), own (own price)"
    )


def _decimal_json(body: bytes) -> Any:
    """JSON with its numbers read as the decimals they spell."""
    return json.loads(body, parse_float=Decimal, parse_int=Decimal)
