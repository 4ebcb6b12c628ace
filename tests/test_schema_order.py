"""A schema reaches the upstream as its caller wrote it, keys in order (CONTRACT, the
`/v1/messages` bullet): a tool's `parameters` (`input_schema` on `/v1/messages`), a
`response_format` schema (Ollama's `format` on `/api`), through every door — the
official SDKs on `/v1`, `/api` and `/v1/messages`, JSON on `/native/v1`, gRPC with
`parameters_json` / `schema_json` — to an OpenAI-, an Anthropic- and an Ollama-kind
fake upstream, which records the body as it came (dicts keep their order). A gRPC
Struct alone still works, without its order; a schema text that is not a JSON
object's is a 400 / INVALID_ARGUMENT naming its field."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anthropic
import grpc
import httpx
import ollama
import openai
import orjson
import pytest
from tandem.v1 import chat_pb2, chat_pb2_grpc

from tests.fake_upstream import FakeUpstream
from tests.rpc_status import details_of
from tests.servers import TandemProcess

CONFIG = """
providers:
  - {name: oa, kind: openai, base_url: "%(url)s", api_key: k, max_retries: 0}
  - {name: an, kind: anthropic, base_url: "%(root)s", api_key: k, max_retries: 0}
  - {name: ol, kind: ollama, base_url: "%(root)s", max_retries: 0}
models:
  - {name: gpt, provider: oa}
  - {name: claude, provider: an}
  - {name: llama, provider: ol}
tiers:
  free: {default_model: gpt}
"""
MODELS = {"openai": "gpt", "anthropic": "claude", "ollama": "llama"}
# "reason first, then answer": neither sorted nor the order a map would give back
PROPERTIES = ["reasoning", "answer", "confidence"]
SCHEMA: Any = {
    "type": "object",
    "properties": {
        "reasoning": {"type": "string", "description": "think first"},
        "answer": {
            "type": "object",
            "properties": {"zeta": {"type": "string"}, "alpha": {"type": "integer", "minimum": 0}},
            "required": ["zeta", "alpha"],
        },
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["reasoning", "answer", "confidence"],
    "additionalProperties": False,
}
TEXT = orjson.dumps(SCHEMA).decode()
TOOL: Any = {"type": "function", "function": {"name": "answer", "parameters": SCHEMA}}
RESPONSE_FORMAT: Any = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}}
USER: Any = [{"role": "user", "content": "why is the sky blue"}]


@dataclass
class Schemas:
    """A request's schemas: its tool's parameters, and its response schema if it has one."""

    tool: Any
    response: Any = None


def keeping(wire: list[Any]) -> dict[str, list[Callable[[Any], None]]]:
    """httpx event hooks for an SDK's client that keep each body it sends: what the
    caller wrote, after the SDK had its say (ollama's rewrites a tool's parameters)."""
    return {"request": [lambda sent: wire.append(orjson.loads(sent.content))]}


def by_openai_sdk(gateway: TandemProcess, model: str, response: bool) -> Schemas:
    wire: list[Any] = []
    extra = {"response_format": RESPONSE_FORMAT} if response else {}
    with openai.OpenAI(
        base_url=f"{gateway.base_url}/v1",
        api_key="x",
        max_retries=0,
        http_client=openai.DefaultHttpxClient(event_hooks=keeping(wire)),
    ) as sdk:
        sdk.chat.completions.create(model=model, messages=USER, tools=[TOOL], **extra)
    body = wire[-1]
    schema = body["response_format"]["json_schema"]["schema"] if response else None
    return Schemas(body["tools"][0]["function"]["parameters"], schema)


def by_native_json(gateway: TandemProcess, model: str, response: bool) -> Schemas:
    body: Any = {"model": model, "messages": USER, "tools": [TOOL]}
    if response:
        body["response_format"] = RESPONSE_FORMAT
    answer = httpx.post(f"{gateway.base_url}/native/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    return Schemas(SCHEMA, SCHEMA if response else None)


def grpc_request(model: str, response: bool, **function: Any) -> chat_pb2.ChatCompletionRequest:
    request = chat_pb2.ChatCompletionRequest(model=model, messages=USER)
    request.tools.add(
        type="function", function=chat_pb2.FunctionDefinition(name="answer", **function)
    )
    if response:
        request.response_format.type = "json_schema"
        request.response_format.json_schema.name = "answer"
        request.response_format.json_schema.schema_json = TEXT
    return request


def grpc_chat(gateway: TandemProcess, request: chat_pb2.ChatCompletionRequest) -> Any:
    with grpc.insecure_channel(gateway.grpc) as channel:
        return chat_pb2_grpc.ChatServiceStub(channel).CreateChatCompletion(request, timeout=30)


def by_grpc_text(gateway: TandemProcess, model: str, response: bool) -> Schemas:
    grpc_chat(gateway, grpc_request(model, response, parameters_json=TEXT))
    return Schemas(SCHEMA, SCHEMA if response else None)


def by_ollama_sdk(gateway: TandemProcess, model: str, response: bool) -> Schemas:
    wire: list[Any] = []
    with ollama.Client(host=gateway.base_url, event_hooks=keeping(wire)) as sdk:
        sdk.chat(model=model, messages=USER, tools=[TOOL], format=SCHEMA if response else None)
    body = wire[-1]
    return Schemas(body["tools"][0]["function"]["parameters"], body.get("format"))


def by_anthropic_sdk(gateway: TandemProcess, model: str, response: bool) -> Schemas:
    assert not response  # the Messages API has no response schema
    wire: list[Any] = []
    tool: Any = {"name": "answer", "input_schema": SCHEMA}
    with anthropic.Anthropic(
        base_url=gateway.base_url,
        api_key="x",
        max_retries=0,
        http_client=anthropic.DefaultHttpxClient(event_hooks=keeping(wire)),
    ) as sdk:
        sdk.messages.create(model=model, max_tokens=100, messages=USER, tools=[tool])
    return Schemas(wire[-1]["tools"][0]["input_schema"])


DOORS: dict[str, Callable[[TandemProcess, str, bool], Schemas]] = {
    "/v1": by_openai_sdk,
    "/native/v1": by_native_json,
    "grpc": by_grpc_text,
    "/api": by_ollama_sdk,
    "/v1/messages": by_anthropic_sdk,
}


def received(kind: str, body: Any) -> Schemas:
    """The schemas as an upstream of `kind` got them."""
    if kind == "anthropic":  # it has no response schema: refused by name
        return Schemas(body["tools"][0]["input_schema"])
    if kind == "ollama":
        return Schemas(body["tools"][0]["function"]["parameters"], body.get("format"))
    response = body.get("response_format")
    return Schemas(
        body["tools"][0]["function"]["parameters"],
        response["json_schema"]["schema"] if response else None,
    )


def assert_as_written(got: Any, sent: Any) -> None:
    """The same JSON text: the same keys in the same order, at every level, and the same
    values (an integer stays one; a Struct would make it a float)."""
    assert orjson.dumps(got).decode() == orjson.dumps(sent).decode()


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("door", DOORS)
def test_a_schema_reaches_the_upstream_as_written(
    gateway: TandemProcess, fake: FakeUpstream, door: str, kind: str
) -> None:
    fake.reset()
    response = door != "/v1/messages" and kind != "anthropic"
    sent = DOORS[door](gateway, MODELS[kind], response)
    assert list(sent.tool["properties"]) == PROPERTIES
    got = received(kind, fake.requests[-1].body)
    assert_as_written(got.tool, sent.tool)
    assert_as_written(got.response, sent.response)
    if response:
        assert list(got.response["properties"]) == PROPERTIES
        assert list(got.response["properties"]["answer"]["properties"]) == ["zeta", "alpha"]


@pytest.mark.parametrize("kind", MODELS)
def test_a_grpc_struct_alone_still_works_without_its_order(
    gateway: TandemProcess, fake: FakeUpstream, kind: str
) -> None:
    fake.reset()
    request = grpc_request(MODELS[kind], False)
    request.tools[0].function.parameters.update(SCHEMA)
    grpc_chat(gateway, request)
    assert received(kind, fake.requests[-1].body).tool == SCHEMA  # numbers as floats


def test_a_schema_text_wins_over_its_struct(gateway: TandemProcess, fake: FakeUpstream) -> None:
    fake.reset()
    request = grpc_request("gpt", False, parameters_json=TEXT)
    request.tools[0].function.parameters.update({"type": "object"})
    grpc_chat(gateway, request)
    assert_as_written(received("openai", fake.requests[-1].body).tool, SCHEMA)


def test_a_native_caller_may_send_the_text_itself(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset()
    text = orjson.dumps(SCHEMA, option=orjson.OPT_INDENT_2).decode()
    function = {"name": "answer", "parameters": {"type": "object"}, "parameters_json": text}
    body = {
        "model": "llama",
        "messages": USER,
        "tools": [{"type": "function", "function": function}],
    }
    answer = httpx.post(f"{gateway.base_url}/native/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    assert_as_written(received("ollama", fake.requests[-1].body).tool, SCHEMA)


def test_the_estimate_reads_the_schema_text(gateway: TandemProcess, fake: FakeUpstream) -> None:
    fake.reset("nousage")  # the answer is charged the gateway's estimate
    long = {**SCHEMA, "description": "word " * 3000}
    answer = grpc_chat(
        gateway, grpc_request("gpt", False, parameters_json=orjson.dumps(long).decode())
    )
    assert answer.usage.prompt_tokens > 3000


NESTED = "[" * 40 + "]" * 40
BAD_TEXTS = [
    ("tools", "[1, 2]", "tools[0].function.parameters_json"),
    ("tools", '{"type": "object"', "tools[0].function.parameters_json"),
    ("tools", '{"deep": ' + NESTED + "}", "tools[0].function.parameters_json"),
    ("response", "null", "response_format.json_schema.schema_json"),
]


@pytest.mark.parametrize(("where", "text", "field"), BAD_TEXTS)
@pytest.mark.parametrize("streamed", [False, True])
def test_a_grpc_schema_text_that_is_not_an_object_is_invalid_argument(
    gateway: TandemProcess, fake: FakeUpstream, where: str, text: str, field: str, streamed: bool
) -> None:
    fake.reset()
    request = grpc_request("gpt", where == "response")
    if where == "tools":
        request.tools[0].function.parameters_json = text
    else:
        request.response_format.json_schema.schema_json = text
    with grpc.insecure_channel(gateway.grpc) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            if streamed:
                list(stub.StreamChatCompletion(request, timeout=30))
            else:
                stub.CreateChatCompletion(request, timeout=30)
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(f"{field}: ")
    details = details_of(error)
    assert details.bad_request is not None
    assert [v.field for v in details.bad_request.field_violations] == [field]
    assert fake.requests == []


@pytest.mark.parametrize(("where", "text", "field"), BAD_TEXTS)
def test_a_native_schema_text_that_is_not_an_object_is_a_400(
    gateway: TandemProcess, fake: FakeUpstream, where: str, text: str, field: str
) -> None:
    fake.reset()
    body: Any = {"model": "gpt", "messages": USER}
    if where == "tools":
        function = {"name": "answer", "parameters_json": text}
        body["tools"] = [{"type": "function", "function": function}]
    else:
        json_schema = {"name": "answer", "schema_json": text}
        body["response_format"] = {"type": "json_schema", "json_schema": json_schema}
    answer = httpx.post(f"{gateway.base_url}/native/v1/chat/completions", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", field)
    assert fake.requests == []
