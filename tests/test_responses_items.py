"""The Responses door's items beyond text and function calls, through a live gateway and
the official `openai` SDK: `responses.parse`, reasoning sealed into
`encrypted_content` and accepted back (across turns, replicas and restarts, on an
Anthropic upstream with its thinking signature), custom (freeform) and namespace
tools as chat functions mapped back, and `safety_identifier`."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openai
import orjson
import pydantic
import pytest

from server.translate.responses.seal import Sealer
from tests.balancer import free_ports
from tests.fake_upstream import REASONING, FakeUpstream
from tests.responses_helpers import WEATHER, stream_events
from tests.scripted_upstream import (
    ScriptedUpstream,
    anthropic_text,
    anthropic_thinking_then_tool,
    openai_chunks,
    openai_text,
    openai_tool_call,
)
from tests.servers import TandemProcess, start_tandem
from tests.stores import pg_schema_url

CONFIG = """
providers:
  - {name: up, kind: openai, base_url: "%(url)s", api_key: k, max_retries: 0, send_reasoning: true}
  - {name: scripted, kind: openai, base_url: "%(scripted)s/v1", api_key: k, max_retries: 0}
  - {name: claude, kind: anthropic, base_url: "%(scripted)s", api_key: k, max_retries: 0}
models:
  - {name: relay, provider: up}
  - {name: tooler, provider: scripted}
  - {name: thinker, provider: claude}
tiers:
  free: {default_model: relay}
usage: {store: "%(store)s", flush_interval_ms: 20}
"""
SIGNATURE = "EqQBCkYIBRgCKkA-signed-by-anthropic"
THOUGHT = "The user wants the weather; I should call the tool."
PATCH = '*** Begin Patch\n*** Add File: hello.txt\n+hi "there"\n*** End Patch\n'
APPLY_PATCH: Any = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Edit files.",
    "format": {"type": "grammar", "syntax": "lark", "definition": "start: begin_patch"},
}


def config(fake: FakeUpstream, scripted: ScriptedUpstream, store: str) -> str:
    return CONFIG % {"url": fake.base_url, "scripted": scripted.root, "store": store}


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def gateway(
    fake: FakeUpstream, scripted: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TandemProcess]:
    process = start_tandem(
        tmp_path_factory.mktemp("items"), config(fake, scripted, "sqlite:///usage.db")
    )
    yield process
    assert process.terminate() == 0, process.stderr()


@pytest.fixture
def sdk(gateway: TandemProcess, fake: FakeUpstream, scripted: ScriptedUpstream) -> Iterator[Any]:
    fake.reset()
    scripted.reset()
    with openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="x", max_retries=0) as client:
        yield client


def post(gateway: TandemProcess, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{gateway.base_url}/v1/responses", json=body, timeout=30)


def events(response: httpx.Response) -> list[tuple[str, Any]]:
    """A stream's named events (`stream_events`), once it answered 200."""
    assert response.status_code == 200, response.text
    return stream_events(response)


def assert_opaque(token: str, *texts: str) -> None:
    """A sealed token shows none of what it seals, even decoded."""
    raw = base64.b64decode(token)
    for text in texts:
        assert text not in token
        assert text.encode() not in raw


# --- responses.parse ----------------------------------------------------------------


class Answer(pydantic.BaseModel):
    zeta: str
    alpha: int


def test_parse_with_a_pydantic_schema_keeps_the_callers_key_order(
    sdk: Any, fake: FakeUpstream
) -> None:
    # the fake echoes the user's text: the answer is the JSON the schema describes
    parsed = sdk.responses.parse(
        model="relay", input='{"zeta": "z", "alpha": 1}', text_format=Answer
    )
    assert parsed.output_parsed == Answer(zeta="z", alpha=1)
    sent = fake.requests[-1].body["response_format"]
    assert sent["type"] == "json_schema"
    assert sent["json_schema"]["name"] == "Answer"
    assert sent["json_schema"]["strict"] is True
    assert list(sent["json_schema"]["schema"]["properties"]) == ["zeta", "alpha"]


# --- sealed reasoning ---------------------------------------------------------------


def test_reasoning_whole_and_streamed_carries_opaque_encrypted_content(
    sdk: Any, gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset("reasoning")
    whole = sdk.responses.create(
        model="relay", input="think", include=["reasoning.encrypted_content"]
    )
    reasoning = whole.output[0]
    assert reasoning.type == "reasoning"
    assert reasoning.content[0].text == REASONING
    assert reasoning.encrypted_content
    assert_opaque(reasoning.encrypted_content, REASONING)

    fake.reset("reasoning")
    seen = events(post(gateway, {"model": "relay", "input": "think", "stream": True}))
    done = [data["item"] for name, data in seen if name == "response.output_item.done"]
    assert done[0]["type"] == "reasoning"
    sealed = done[0]["encrypted_content"]
    assert_opaque(sealed, REASONING)
    assert sealed != reasoning.encrypted_content  # a fresh nonce each time
    assert seen[-1][0] == "response.completed"
    assert seen[-1][1]["response"]["output"][0]["encrypted_content"] == sealed


def test_a_sealed_reasoning_item_is_the_next_turns_reasoning(sdk: Any, fake: FakeUpstream) -> None:
    fake.reset("reasoning")
    first = sdk.responses.create(model="relay", input="think")
    reasoning = first.output[0]
    fake.reset()
    sdk.responses.create(
        model="relay",
        input=[
            {"role": "user", "content": "think"},
            # as Codex sends it back: no reasoning_text, only the sealed content
            {
                "type": "reasoning",
                "id": reasoning.id,
                "summary": [],
                "encrypted_content": reasoning.encrypted_content,
            },
            {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": "again"},
        ],
    )
    assistant = fake.requests[-1].body["messages"][1]
    assert assistant == {
        "role": "assistant",
        "content": first.output_text,
        "reasoning_content": REASONING,
    }


@pytest.mark.parametrize("stream", [False, True])
def test_an_anthropic_thinking_signature_survives_a_stateless_tool_loop(
    sdk: Any, scripted: ScriptedUpstream, stream: bool
) -> None:
    scripted.reset(
        anthropic_thinking_then_tool(THOUGHT, SIGNATURE, "get_weather", {"city": "Paris"}),
        anthropic_text("sunny it is"),
    )
    question = {"role": "user", "content": "weather in Paris?"}
    if stream:
        with sdk.responses.stream(model="thinker", input=[question], tools=[WEATHER]) as events:
            for _ in events:
                pass
            first = events.get_final_response()
    else:
        first = sdk.responses.create(model="thinker", input=[question], tools=[WEATHER])
    reasoning, call = first.output
    assert (reasoning.type, call.type) == ("reasoning", "function_call")
    assert reasoning.content[0].text == THOUGHT
    assert_opaque(reasoning.encrypted_content, THOUGHT, SIGNATURE)
    assert (call.call_id, call.name, orjson.loads(call.arguments)) == (
        "toolu_1",
        "get_weather",
        {"city": "Paris"},
    )

    second = sdk.responses.create(
        model="thinker",
        tools=[WEATHER],
        input=[
            question,
            {"type": "reasoning", "summary": [], "encrypted_content": reasoning.encrypted_content},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
    )
    assert second.output_text == "sunny it is"
    turn = scripted.bodies[-1]["messages"]
    assert turn[1]["role"] == "assistant"
    assert turn[1]["content"][0] == {
        "type": "thinking",
        "thinking": THOUGHT,
        "signature": SIGNATURE,
    }
    assert turn[1]["content"][1]["type"] == "tool_use"
    assert turn[2]["content"][0]["tool_use_id"] == "toolu_1"


def test_an_encrypted_content_that_does_not_open_is_left_out_named_never_its_signature(
    sdk: Any, scripted: ScriptedUpstream, fake: FakeUpstream
) -> None:
    # Codex resends its whole history each turn: a token this gateway cannot open
    # (OpenAI's own, another key's, a changed one) must not end the session with a 400
    scripted.reset(anthropic_thinking_then_tool(THOUGHT, SIGNATURE, "get_weather", {}))
    question = {"role": "user", "content": "weather?"}
    reasoning, call = sdk.responses.create(
        model="thinker", input=[question], tools=[WEATHER]
    ).output
    raw = bytearray(base64.b64decode(reasoning.encrypted_content))
    raw[len(raw) // 2] ^= 1
    tampered = base64.b64encode(raw).decode()
    foreign = Sealer.from_secret("another gateway's key, 32 chars.").seal(THOUGHT, SIGNATURE)
    openai_own = "gAAAAABpOpenAIsOwnReasoningToken-_0123456789=="
    for token, text in ((tampered, ""), (foreign, ""), (openai_own, THOUGHT)):
        scripted.reset(anthropic_text("sunny"))
        item: Any = {"type": "reasoning", "summary": [], "encrypted_content": token}
        if text:
            item["content"] = [{"type": "reasoning_text", "text": text}]
        call_item = {"type": "function_call", "call_id": call.call_id, "name": call.name}
        answer = sdk.responses.with_raw_response.create(
            model="thinker",
            tools=[WEATHER],
            input=[
                question,
                item,
                {**call_item, "arguments": call.arguments},
                {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
            ],
        )
        assert answer.parse().output_text == "sunny"
        assert "input[].encrypted_content" in answer.headers["x-tandem-ignored-fields"].split(",")
        sent = orjson.dumps(scripted.bodies[-1]).decode()
        assert SIGNATURE not in sent  # a token that did not open never yields its signature
    # the readable text, unsigned, is the reasoning (Anthropic takes none unsigned; an
    # OpenAI-kind upstream does)
    fake.reset()
    sdk.responses.create(
        model="relay",
        input=[
            {"role": "user", "content": "think"},
            {
                "type": "reasoning",
                "summary": [],
                "encrypted_content": openai_own,
                "content": [{"type": "reasoning_text", "text": REASONING}],
            },
            {"role": "assistant", "content": "ok"},
        ],
    )
    assert fake.requests[-1].body["messages"][1]["reasoning_content"] == REASONING


def test_the_seal_key_is_shared_by_replicas_on_one_store_and_outlives_a_restart(
    fake: FakeUpstream, scripted: ScriptedUpstream, tmp_path: Path
) -> None:
    with pg_schema_url() as store:
        text = config(fake, scripted, store)
        one = start_tandem(tmp_path, text)
        two = start_tandem(tmp_path, text)
        try:
            fake.reset("reasoning")
            made = post(one, {"model": "relay", "input": "think"}).json()
            sealed = made["output"][0]["encrypted_content"]
            body = {
                "model": "relay",
                "input": [
                    {"type": "reasoning", "summary": [], "encrypted_content": sealed},
                    {"role": "assistant", "content": "ok"},
                    {"role": "user", "content": "go on"},
                ],
            }
            fake.reset()
            assert post(two, body).status_code == 200
            assert fake.requests[-1].body["messages"][0]["reasoning_content"] == REASONING
            assert one.terminate() == 0
            one = start_tandem(tmp_path, text)  # a restart: the key is read back
            fake.reset()
            assert post(one, body).status_code == 200
            assert fake.requests[-1].body["messages"][0]["reasoning_content"] == REASONING
        finally:
            for process in (one, two):
                process.terminate()

        async def secrets() -> list[Any]:
            connection = await asyncpg.connect(store)
            try:
                return list(await connection.fetch("SELECT name FROM secrets"))
            finally:
                await connection.close()

        assert [row["name"] for row in asyncio.run(secrets())] == ["responses.seal_key"]


def test_a_configured_seal_key_opens_what_the_same_key_sealed(
    fake: FakeUpstream, scripted: ScriptedUpstream, tmp_path: Path
) -> None:
    key = "an operator's seal key of some length"
    text = config(fake, scripted, "none") + f'responses: {{seal_key: "{key}"}}\n'
    gateway = start_tandem(tmp_path, text)
    try:
        fake.reset("reasoning")
        sealed = post(gateway, {"model": "relay", "input": "t"}).json()["output"][0]
        assert Sealer.from_secret(key).open(sealed["encrypted_content"]) == (REASONING, None)
    finally:
        assert gateway.terminate() == 0


def test_workers_without_a_store_share_one_seal_key(
    fake: FakeUpstream, scripted: ScriptedUpstream, tandem: Callable[..., TandemProcess]
) -> None:
    http, grpc = (f"127.0.0.1:{port}" for port in free_ports(2))
    text = config(fake, scripted, "none")
    server = tandem(text, args=["--workers", "2", "--http", http, "--grpc", grpc])
    fake.reset("reasoning")
    sealed = post(server, {"model": "relay", "input": "t"}).json()["output"][0]
    body = {
        "model": "relay",
        "input": [
            {"type": "reasoning", "summary": [], "encrypted_content": sealed["encrypted_content"]},
            {"role": "assistant", "content": "ok"},
        ],
    }
    # a new connection each time (post), so the kernel spreads them over both workers
    fake.reset()
    assert [post(server, body).status_code for _ in range(12)] == [200] * 12
    # each opened it (one that does not is left out, not refused)
    opened = [r.body["messages"][0].get("reasoning_content") for r in fake.requests]
    assert opened == [REASONING] * 12
    assert server.terminate() == 0


# --- custom and namespace tools -----------------------------------------------------


def test_a_custom_tool_round_trip_event_by_event(
    gateway: TandemProcess, scripted: ScriptedUpstream, sdk: Any
) -> None:
    arguments = orjson.dumps({"input": PATCH}).decode()
    scripted.reset(openai_tool_call("apply_patch", arguments, "call_p"), openai_text("done"))
    seen = events(
        post(
            gateway,
            {"model": "tooler", "input": "add hello.txt", "tools": [APPLY_PATCH], "stream": True},
        )
    )
    assert [name for name, _ in seen] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.custom_tool_call_input.delta",
        "response.custom_tool_call_input.done",
        "response.output_item.done",
        "response.completed",
    ]
    added, delta, input_done, item_done = (data for _, data in seen[2:6])
    item = item_done["item"]
    assert item == {
        "id": item["id"],
        "type": "custom_tool_call",
        "call_id": "call_p",
        "name": "apply_patch",
        "input": PATCH,
        "status": "completed",
    }
    assert item["id"].startswith("ctc_")
    assert added["item"] == {**item, "input": "", "status": "in_progress"}
    assert (added["output_index"], delta["output_index"], item_done["output_index"]) == (0, 0, 0)
    assert (delta["item_id"], delta["delta"]) == (item["id"], PATCH)
    assert (input_done["item_id"], input_done["input"]) == (item["id"], PATCH)
    assert seen[-1][1]["response"]["output"] == [item]
    function = scripted.bodies[0]["tools"][0]["function"]
    assert function["name"] == "apply_patch"
    assert function["parameters"]["properties"] == {
        "input": {"type": "string", "description": "The tool's whole input."}
    }
    assert function["parameters"]["required"] == ["input"]
    assert "start: begin_patch" in function["description"]

    second = sdk.responses.create(
        model="tooler",
        tools=[APPLY_PATCH],
        tool_choice={"type": "custom", "name": "apply_patch"},
        input=[
            {"role": "user", "content": "add hello.txt"},
            {
                "type": "custom_tool_call",
                "call_id": "call_p",
                "name": "apply_patch",
                "input": PATCH,
            },
            {"type": "custom_tool_call_output", "call_id": "call_p", "output": "Success."},
        ],
    )
    assert second.output_text == "done"
    sent = scripted.bodies[-1]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "apply_patch"}}
    assistant, tool = sent["messages"][1:]
    [call] = assistant["tool_calls"]
    assert (call["id"], call["function"]["name"]) == ("call_p", "apply_patch")
    assert orjson.loads(call["function"]["arguments"]) == {"input": PATCH}
    assert tool == {"role": "tool", "tool_call_id": "call_p", "content": "Success."}


def test_a_custom_tool_call_through_the_sdk_stream(sdk: Any, scripted: ScriptedUpstream) -> None:
    scripted.reset(openai_tool_call("apply_patch", orjson.dumps({"input": PATCH}).decode()))
    with sdk.responses.stream(model="tooler", input="x", tools=[APPLY_PATCH]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" not in kinds
    [call] = final.output
    assert (call.type, call.name, call.input) == ("custom_tool_call", "apply_patch", PATCH)


def test_a_namespace_tool_round_trip(sdk: Any, scripted: ScriptedUpstream) -> None:
    namespace = {
        "type": "namespace",
        "name": "mcp__files",
        "description": "A file server.",
        "tools": [
            {"type": "function", "name": "read", "parameters": {"type": "object"}},
            {"type": "function", "name": "list", "parameters": {"type": "object"}},
        ],
    }
    scripted.reset(
        openai_tool_call("mcp__files__read", '{"path": "a.txt"}', "call_r"), openai_text("read")
    )
    first = sdk.responses.create(model="tooler", input="read a.txt", tools=[WEATHER, namespace])
    offered = [tool["function"]["name"] for tool in scripted.bodies[0]["tools"]]
    assert offered == ["get_weather", "mcp__files__read", "mcp__files__list"]
    [call] = first.output
    assert (call.type, call.name, call.namespace, call.call_id) == (
        "function_call",
        "read",
        "mcp__files",
        "call_r",
    )

    sdk.responses.create(
        model="tooler",
        tools=[namespace],
        input=[
            {"role": "user", "content": "read a.txt"},
            {
                "type": "function_call",
                "call_id": "call_r",
                "name": "read",
                "namespace": "mcp__files",
                "arguments": '{"path": "a.txt"}',
            },
            {"type": "function_call_output", "call_id": "call_r", "output": "hello"},
        ],
    )
    [call_back] = scripted.bodies[-1]["messages"][1]["tool_calls"]
    assert call_back["function"]["name"] == "mcp__files__read"


def test_a_hosted_tool_beside_custom_ones_is_named_ignored(
    gateway: TandemProcess, scripted: ScriptedUpstream
) -> None:
    scripted.reset(openai_text("hi"))
    answer = post(
        gateway, {"model": "tooler", "input": "x", "tools": [{"type": "web_search"}, APPLY_PATCH]}
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-tandem-ignored-fields"] == "tools[].web_search"
    assert [t["function"]["name"] for t in scripted.bodies[-1]["tools"]] == ["apply_patch"]


# --- safety_identifier ----------------------------------------------------------------


def test_safety_identifier_is_the_user_where_none_is_given(sdk: Any, fake: FakeUpstream) -> None:
    answer = sdk.responses.create(model="relay", input="x", safety_identifier="hashed-user-1")
    assert fake.requests[-1].body["user"] == "hashed-user-1"
    assert (answer.safety_identifier, answer.user) == ("hashed-user-1", None)
    both = sdk.responses.create(model="relay", input="x", user="u-2", safety_identifier="s-2")
    assert fake.requests[-1].body["user"] == "u-2"
    assert (both.safety_identifier, both.user) == ("s-2", "u-2")


# --- input_file ---------------------------------------------------------------------


def test_an_input_file_reaches_an_openai_upstream_as_a_file_part(
    sdk: Any, fake: FakeUpstream
) -> None:
    pdf = "data:application/pdf;base64,JVBERi0xLjQK"
    content = [
        {"type": "input_text", "text": "summarise"},
        {"type": "input_file", "file_data": pdf, "filename": "a.pdf"},
    ]
    sdk.responses.create(model="relay", input=[{"role": "user", "content": content}])
    assert fake.requests[-1].body["messages"][0]["content"] == [
        {"type": "text", "text": "summarise"},
        {"type": "file", "file": {"file_data": pdf, "filename": "a.pdf"}},
    ]
    by_id = [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.create(model="relay", input=by_id)
    error: Any = refused.value.body
    assert error["param"] == "input[0].content[0].file_id"


def test_an_image_a_tool_returned_reaches_the_upstream_and_a_sealed_part_is_named(
    sdk: Any, fake: FakeUpstream, scripted: ScriptedUpstream
) -> None:
    # Codex's `view_image`: the tool's output is the image
    image = "data:image/png;base64,iVBORw0KGgo="
    output = [
        {"type": "input_image", "image_url": image},
        {"type": "encrypted_content", "encrypted_content": "gAAAAABpAnotherGateways=="},
    ]
    history: Any = [
        {"role": "user", "content": "what is in a.png?"},
        {"type": "function_call", "call_id": "c1", "name": "view_image", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": output},
    ]
    # an Anthropic upstream takes it as the tool result's image block
    scripted.reset(anthropic_text("a cat"))
    answer = sdk.responses.with_raw_response.create(model="thinker", input=history)
    assert answer.parse().output_text == "a cat"
    assert answer.headers["x-tandem-ignored-fields"] == "input[].output[].encrypted_content"
    result = scripted.bodies[-1]["messages"][-1]["content"][0]
    assert result["type"] == "tool_result"
    assert result["content"][0]["type"] == "image"
    # OpenAI's chat API takes text only in a tool message (an image there is a 400, for
    # good: Codex resends it every turn): held back, named
    answer = sdk.responses.with_raw_response.create(model="relay", input=history)
    named = "input[].output[].encrypted_content,messages[tool].content[]"
    assert answer.headers["x-tandem-ignored-fields"] == named
    tool = fake.requests[-1].body["messages"][2]
    assert tool == {"role": "tool", "content": "", "tool_call_id": "c1"}


# --- what an upstream says beyond text --------------------------------------------


def replayed(gateway: TandemProcess, first: httpx.Response) -> str:
    """A stored stream's replay (`GET ?stream=true`)."""
    last = orjson.loads(first.text.strip().split("\n\n")[-1].split("data: ")[1])
    rid = last["response"]["id"]
    return httpx.get(f"{gateway.base_url}/v1/responses/{rid}?stream=true", timeout=30).text


def test_text_after_the_finish_reason_is_an_item_the_sdk_completes_and_replays(
    gateway: TandemProcess, sdk: Any, scripted: ScriptedUpstream
) -> None:
    call = {"index": 0, "id": "call_a", "type": "function", "function": {"name": "f"}}
    steps: Any = [
        (
            {
                "role": "assistant",
                "tool_calls": [{**call, "function": {"name": "f", "arguments": "{}"}}],
            },
            None,
        ),
        ({}, "tool_calls"),
        ({"content": "late"}, None),  # an upstream that speaks after its finish_reason
    ]
    tool = {"type": "function", "name": "f", "parameters": {"type": "object"}}
    scripted.reset(openai_chunks({}, *steps))
    with sdk.responses.stream(model="tooler", input="go", tools=[tool], store=True) as events:
        kinds = [event.type for event in events]
        final = events.get_final_response()  # raised "unfinished output items" before
    assert [item.type for item in final.output] == ["function_call", "message"]
    assert final.output_text == "late"
    assert kinds.count("response.output_item.added") == kinds.count("response.output_item.done")
    scripted.reset(openai_chunks({}, *steps))
    body = {"model": "tooler", "input": "go", "tools": [tool], "stream": True, "store": True}
    first = post(gateway, body)
    assert replayed(gateway, first) == first.text


def test_a_refusal_is_a_refusal_part_whole_streamed_and_replayed(
    gateway: TandemProcess, sdk: Any, scripted: ScriptedUpstream
) -> None:
    refusal = "I can't help with that."
    message = {"role": "assistant", "content": None, "refusal": refusal}
    steps: Any = [
        ({"role": "assistant", "refusal": "I can't "}, None),
        ({"refusal": "help with that."}, None),
        ({}, "stop"),
    ]
    scripted.reset(openai_chunks(message, *steps), openai_chunks(message, *steps))
    whole = sdk.responses.create(model="tooler", input="something bad")
    [item] = whole.output
    assert item.type == "message"
    assert [(p.type, p.refusal) for p in item.content] == [("refusal", refusal)]
    with sdk.responses.stream(model="tooler", input="something bad", store=True) as events:
        seen = list(events)
        final = events.get_final_response()
    assert [p.model_dump() for p in final.output[0].content] == [
        {"type": "refusal", "refusal": refusal}
    ]
    deltas = [e.delta for e in seen if e.type == "response.refusal.delta"]
    assert deltas == ["I can't ", "help with that."]
    [done] = [e for e in seen if e.type == "response.refusal.done"]
    assert done.refusal == refusal
    scripted.reset(openai_chunks(message, *steps))
    first = post(gateway, {"model": "tooler", "input": "x", "stream": True, "store": True})
    assert "response.refusal.delta" in first.text
    assert replayed(gateway, first) == first.text
