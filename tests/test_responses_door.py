"""The Responses door (`/v1/responses`), driven by the official `openai` SDK
(`responses.create`, `responses.stream`) and by raw HTTP for the event order and
framing: on the mock and an OpenAI-compatible upstream (text, streamed tool calls,
tool results, reasoning). Auth, limits, cancellation and upstream errors on every
door are in the parity matrix (test_door_parity.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fake_upstream import REASONING, FakeUpstream
from tests.responses_helpers import (
    ADMIN_KEY,
    AUTH,
    ECHO_AND_RELAY,
    WEATHER,
    post,
    raw,
    sdk_for,
    stream_events,
    token,
)
from tests.servers import TandemProcess, usage_records

CONFIG = f"""{ECHO_AND_RELAY}
{AUTH}
usage: {{store: "sqlite:///usage.db", flush_interval_ms: 20}}
"""


@pytest.fixture
def sdk(gateway: TandemProcess, fake: FakeUpstream) -> Iterator[Any]:
    fake.reset()
    with sdk_for(gateway) as client:
        yield client


def events(response: httpx.Response) -> list[tuple[str, Any]]:
    """The named SSE events of a stream, in order, each checked as it comes: its name is
    its data's `type`, `sequence_number` rises from 0, and each item's events carry
    its `output_index` and `item_id` from `output_item.added` to `output_item.done`."""
    out = stream_events(response)
    assert [name for name, _ in out[:2]] == ["response.created", "response.in_progress"]
    assert "error" not in {key for _, data in out for key in data}
    open_item: tuple[int, str] | None = None
    for name, data in out[2:-1]:
        if name == "response.output_item.added":
            assert open_item is None, "items do not interleave"
            open_item = (data["output_index"], data["item"]["id"])
        elif name == "response.output_item.done":
            assert open_item == (data["output_index"], data["item"]["id"])
            open_item = None
        else:
            assert open_item == (data["output_index"], data["item_id"]), name
    assert open_item is None
    return out


def test_a_string_input_through_the_sdk(sdk: Any) -> None:
    response = sdk.responses.create(model="echo", input="hello there")
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.output_text == "hello there"
    [message] = response.output
    assert message.type == "message"
    assert message.content[0].annotations == []
    assert response.store is True  # the default: responses.store_default
    usage = response.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (2, 2, 4)
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0


def test_items_and_instructions_reach_the_upstream_as_messages(
    sdk: Any, fake: FakeUpstream
) -> None:
    response = sdk.responses.create(
        model="relay",
        instructions="be brief",
        input=[
            {"role": "developer", "content": "no jokes"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "hello"}]},
            {"role": "user", "content": "say it again"},
        ],
        temperature=0.5,
        metadata={"trace": "t1"},
    )
    assert response.output_text == "say it again"
    assert (response.instructions, response.temperature) == ("be brief", 0.5)
    assert response.metadata == {"trace": "t1"}
    [sent] = fake.requests
    assert sent.body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "system", "content": "no jokes"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "say it again"},
    ]
    assert "metadata" not in sent.body
    assert "instructions" not in sent.body


def test_the_sdk_stream_and_its_final_response(sdk: Any) -> None:
    with sdk.responses.stream(model="echo", input="one two three") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "one two three"
    assert final.output_text == "one two three"
    assert final.status == "completed"
    assert final.usage.output_tokens == 3


def test_a_function_tool_round_trip(sdk: Any, fake: FakeUpstream) -> None:
    fake.reset("tools")
    first = sdk.responses.create(model="relay", input="weather?", tools=[WEATHER])
    calls = [item for item in first.output if item.type == "function_call"]
    assert [(c.name, c.call_id, c.arguments) for c in calls] == [
        ("get_weather", "call_a", '{"city": "Paris"}'),
        ("get_time", "call_b", "{}"),
    ]
    assert all(c.id.startswith("fc_") and c.id != c.call_id for c in calls)
    assert first.tools[0].name == "get_weather"
    fake.reset("ok")
    outputs = [
        {"type": "function_call_output", "call_id": c.call_id, "output": "sunny"} for c in calls
    ]
    calls_back = [
        {"type": "function_call", "call_id": c.call_id, "name": c.name, "arguments": c.arguments}
        for c in calls
    ]
    second = sdk.responses.create(
        model="relay", input=[{"role": "user", "content": "weather?"}, *calls_back, *outputs]
    )
    assert second.status == "completed"
    sent = fake.requests[-1].body
    assert "tools" not in sent  # this turn offered none
    assert sent["messages"][1]["role"] == "assistant"
    assert [c["id"] for c in sent["messages"][1]["tool_calls"]] == ["call_a", "call_b"]
    assert sent["messages"][2:] == [
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_b", "content": "sunny"},
    ]


def test_streamed_tool_calls_and_reasoning_are_items_in_order(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset("tools")
    seen = events(
        post(gateway, {"model": "relay", "input": "x", "tools": [WEATHER], "stream": True})
    )
    names = [name for name, _ in seen]
    assert names.count("response.output_item.added") == 2
    assert names[-1] == "response.completed"
    done = [data["item"] for name, data in seen if name == "response.output_item.done"]
    assert [(i["type"], i["call_id"]) for i in done] == [
        ("function_call", "call_a"),
        ("function_call", "call_b"),
    ]
    final = seen[-1][1]["response"]
    assert final["output"] == done
    fake.reset("reasoning")
    seen = events(post(gateway, {"model": "relay", "input": "think", "stream": True}))
    kinds = [data["item"]["type"] for name, data in seen if name == "response.output_item.done"]
    assert kinds == ["reasoning", "message"]
    reasoning = "".join(
        data["delta"] for name, data in seen if name == "response.reasoning_text.delta"
    )
    assert reasoning == REASONING
    assert seen[-1][1]["response"]["output"][0]["content"][0]["text"] == REASONING


def test_raw_events_of_a_text_stream_one_by_one(gateway: TandemProcess) -> None:
    seen = events(post(gateway, {"model": "echo", "input": "a b", "stream": True}))
    assert [name for name, _ in seen] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    created = seen[0][1]["response"]
    assert (created["status"], created["output"], created["usage"]) == ("in_progress", [], None)
    final = seen[-1][1]["response"]
    assert final["id"] == created["id"]
    assert final["status"] == "completed"
    assert seen[6][1]["text"] == "a b"
    assert final["output"][0]["content"][0]["text"] == "a b"
    assert final["usage"]["total_tokens"] == 4


def test_max_output_tokens_is_an_incomplete_response(gateway: TandemProcess) -> None:
    body = {"model": "echo", "input": "one two three four", "max_output_tokens": 2}
    whole = post(gateway, body).json()
    assert whole["status"] == "incomplete"
    assert whole["incomplete_details"] == {"reason": "max_output_tokens"}
    assert whole["max_output_tokens"] == 2
    seen = events(post(gateway, {**body, "stream": True}))
    assert seen[-1][0] == "response.incomplete"
    assert seen[-1][1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "echo", "input": []}, "input"),
        ({"model": "echo", "input": [{"type": "nope"}]}, "input[0].type"),
        ({"model": "echo", "input": "x", "previous_response_id": 1}, "previous_response_id"),
        ({"model": "echo", "input": "x", "store": "yes"}, "store"),
        ({"model": "echo", "input": "x", "background": True}, "background"),
        ({"model": "echo", "input": "x", "conversation": "conv_1"}, "conversation"),
        ({"model": "echo", "input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type"),
    ],
)
def test_what_cannot_be_served_is_a_400_in_openais_shape(
    gateway: TandemProcess, body: dict[str, Any], param: str
) -> None:
    refused = post(gateway, body)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


def test_hosted_tools_are_named_unread_and_json_schema_keeps_its_text(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset()
    schema = '{"type":"object","properties":{"b":{"type":"string"},"a":{"type":"string"}}}'
    body = (
        '{"model":"relay","input":"hi","store":true,"tools":[{"type":"web_search"}],'
        '"include":["x"],"text":{"format":{"type":"json_schema","name":"s","schema":'
        + schema
        + "}}}"
    )
    answer = raw(
        gateway, "POST", "/v1/responses", content=body, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-tandem-ignored-fields"] == "include,tools[].web_search"
    assert answer.json()["store"] is True
    format_sent = fake.requests[-1].body["response_format"]
    assert format_sent["type"] == "json_schema"
    assert list(format_sent["json_schema"]["schema"]["properties"]) == ["b", "a"]
    assert "tools" not in fake.requests[-1].body
    # what is always honoured is not named: a reasoning item's encrypted_content
    sealed_only = {"model": "relay", "input": "hi", "include": ["reasoning.encrypted_content"]}
    answer = raw(gateway, "POST", "/v1/responses", json=sealed_only)
    assert answer.status_code == 200, answer.text
    assert "x-tandem-ignored-fields" not in answer.headers


def test_the_ledger_records_protocol_responses_once_per_request(gateway: TandemProcess) -> None:
    post(gateway, {"model": "echo", "input": "x"}, sub="ledger-sub")
    post(gateway, {"model": "echo", "input": "y", "stream": True}, sub="ledger-sub")
    records = usage_records(gateway, 2, ADMIN_KEY, user="ledger-sub")
    assert len(records) == 2
    assert {(r["protocol"], r["status"]) for r in records} == {("responses", "ok")}


def test_a_websocket_upgrade_is_refused_at_once_with_426(gateway: TandemProcess) -> None:
    """Codex tries a WebSocket first where its provider allows one; only a 426 makes it
    fall back to SSE without retrying. A GET that asks for no upgrade is a 405."""
    upgrade = {
        "connection": "Upgrade",
        "upgrade": "websocket",
        "sec-websocket-version": "13",
        "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
        "authorization": f"Bearer {token()}",
    }
    refused = httpx.get(f"{gateway.base_url}/v1/responses", headers=upgrade, timeout=10)
    assert refused.status_code == 426
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "websocket_not_supported")
    plain = httpx.get(
        f"{gateway.base_url}/v1/responses",
        headers={"authorization": f"Bearer {token()}"},
        timeout=10,
    )
    assert plain.status_code == 405
    assert plain.headers["allow"] == "POST"
