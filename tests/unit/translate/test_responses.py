"""The Responses dialect in process: a request's items as chat messages, what it cannot
serve refused by name, what it cannot carry named, and answers and streams as the
Responses API writes them (through a live gateway: tests/test_responses_door.py)."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from google.protobuf.json_format import MessageToDict
from tandem.v1 import chat_pb2

from server.chunks import Chunk
from server.errors import InvalidRequestError, UpstreamError
from server.translate.openai import to_provider
from server.translate.responses import inbound, replies, stored
from server.translate.responses.seal import Sealer


def messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    request = inbound.parse_chat({"model": "m", **body})
    return [MessageToDict(m) for m in request.messages]


def test_a_string_input_is_one_user_message_after_the_instructions() -> None:
    assert messages({"input": "hi", "instructions": "be brief"}) == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]


def test_items_become_messages_tool_calls_and_tool_results() -> None:
    out = messages(
        {
            "input": [
                {"role": "developer", "content": [{"type": "input_text", "text": "d"}]},
                {"role": "user", "content": [{"type": "input_text", "text": "q"}]},
                {"type": "reasoning", "content": [{"type": "reasoning_text", "text": "hm"}]},
                {"role": "assistant", "content": [{"type": "output_text", "text": "a"}]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "r1"},
                {"type": "function_call_output", "call_id": "c2", "output": "r2"},
            ]
        }
    )
    assert out[:2] == [{"role": "system", "content": "d"}, {"role": "user", "content": "q"}]
    assistant = out[2]
    assert (assistant["content"], assistant["reasoningContent"]) == ("a", "hm")
    assert [c["id"] for c in assistant["toolCalls"]] == ["c1", "c2"]
    assert out[3:] == [
        {"role": "tool", "toolCallId": "c1", "content": "r1"},
        {"role": "tool", "toolCallId": "c2", "content": "r2"},
    ]


def test_settings_reach_the_proto() -> None:
    request = inbound.parse_chat(
        {
            "model": "m",
            "input": "x",
            "max_output_tokens": 7,
            "temperature": 0.2,
            "top_p": 0.9,
            "reasoning": {"effort": "low"},
            "parallel_tool_calls": False,
            "user": "u",
            "tools": [{"type": "function", "name": "f", "parameters": {"b": 1, "a": 2}}],
            "tool_choice": {"type": "function", "name": "f"},
            "text": {"format": {"type": "json_schema", "name": "s", "schema": {"z": 1, "a": 2}}},
            "stream": True,
            "service_tier": "flex",
        }
    )
    assert request.max_completion_tokens == 7
    assert (request.reasoning_effort, request.user, request.stream) == ("low", "u", True)
    assert request.parallel_tool_calls is False
    assert request.tools[0].function.parameters_json == '{"b":1,"a":2}'
    assert request.tool_choice.function.name == "f"
    assert request.response_format.json_schema.schema_json == '{"z":1,"a":2}'
    assert orjson.loads(request.extra_body_json) == {"service_tier": "flex"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": None}, "input"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].id"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_video"}]}]},
            "input[0].content[0].type",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file"}]}]},
            "input[0].content[0].file_data",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].file_id",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_url": "u"}]}]},
            "input[0].content[0].file_url",
        ),
        ({"input": "x", "background": True}, "background"),
        ({"input": "x", "prompt": {"id": "p"}}, "prompt"),
        ({"input": "x", "temperature": "hot"}, "temperature"),
        ({"input": "x", "max_output_tokens": "many"}, "max_output_tokens"),
        ({"input": "x", "tool_choice": 3}, "tool_choice"),
    ],
)
def test_what_cannot_be_served_is_refused_by_name(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        inbound.parse_chat({"model": "m", **body})
    assert refused.value.param == param


def test_hosted_tools_and_untranslated_fields_are_named_unread() -> None:
    body = {
        "model": "m",
        "input": "x",
        "tools": [{"type": "web_search"}, {"type": "function", "name": "f"}],
        "tool_choice": {"type": "web_search"},
        "include": ["reasoning.encrypted_content"],
        "reasoning": {"summary": "auto"},
        "store": True,
        "n": 2,
    }
    request = inbound.parse_chat(body)
    assert [t.function.name for t in request.tools] == ["f"]
    assert not request.HasField("tool_choice")
    assert inbound.unread(body) == ["n", "tools[].web_search", "tool_choice", "reasoning.summary"]


@pytest.mark.parametrize(
    ("include", "named"),
    [
        (["reasoning.encrypted_content"], False),  # always honoured: a reasoning item is sealed
        ([], False),
        (["reasoning.encrypted_content", "message.output_text.logprobs"], True),
        (["web_search_call.action.sources"], True),
    ],
)
def test_include_is_named_only_for_what_is_not_honoured(include: list[str], named: bool) -> None:
    body = {"model": "m", "input": "x", "include": include}
    inbound.parse_chat(body)
    assert ("include" in inbound.unread(body)) is named


def completion(finish: str = "stop", **message: Any) -> chat_pb2.ChatCompletion:
    answer = chat_pb2.ChatCompletion(id="chatcmpl-abc", created=5, model="m")
    choice = answer.choices.add(finish_reason=finish)
    choice.message.role = "assistant"
    for key, value in message.items():
        if key == "tool_calls":
            for call in value:
                choice.message.tool_calls.add(
                    id=call[0], type="function", function={"name": call[1], "arguments": call[2]}
                )
        else:
            setattr(choice.message, key, value)
    answer.usage.prompt_tokens, answer.usage.completion_tokens = 3, 4
    return answer


def test_a_completion_as_a_response_object() -> None:
    answer = replies.encode_completion(
        completion(content="hi", reasoning_content="hm", tool_calls=[("c1", "f", "{}")]),
        inbound.settings({"temperature": 0.5}),
    )
    assert (answer["id"], answer["object"], answer["status"]) == (
        "resp_abc",
        "response",
        "completed",
    )
    assert [item["type"] for item in answer["output"]] == ["reasoning", "message", "function_call"]
    call = answer["output"][2]
    assert (call["id"], call["call_id"]) == ("fc_abc_0", "c1")
    assert answer["output"][1]["content"] == [
        {"type": "output_text", "text": "hi", "annotations": [], "logprobs": []}
    ]
    assert answer["usage"] == {
        "input_tokens": 3,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 4,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 7,
    }
    assert (answer["temperature"], answer["store"], answer["tool_choice"]) == (0.5, False, "auto")


def test_a_length_finish_is_incomplete() -> None:
    answer = replies.encode_completion(completion("length", content="a"), inbound.settings({}))
    assert answer["status"] == "incomplete"
    assert answer["incomplete_details"] == {"reason": "max_output_tokens"}
    assert answer["output"][0]["status"] == "incomplete"


def parsed(wire: bytes) -> list[tuple[str, Any]]:
    out = []
    for event in wire.decode().strip().split("\n\n"):
        name, data = event.split("\n")
        out.append((name.removeprefix("event: "), orjson.loads(data.removeprefix("data: "))))
    return out


def test_a_stream_of_text_items_and_its_fast_path() -> None:
    first = Chunk(id="chatcmpl-abc", created=5, model="m")
    first.choices.add().delta.role = "assistant"
    encoder = replies.StreamEncoder(first, inbound.settings({}))
    last = Chunk()
    last.choices.add(finish_reason="stop")
    last.usage.prompt_tokens, last.usage.completion_tokens = 1, 2
    wire = encoder.encode(first) + encoder.encode("a ") + encoder.encode("b") + encoder.encode(last)
    seen = parsed(wire)
    assert [data["sequence_number"] for _, data in seen] == list(range(len(seen)))
    assert all(name == data["type"] for name, data in seen)
    deltas = [data for name, data in seen if name == "response.output_text.delta"]
    assert [d["delta"] for d in deltas] == ["a ", "b"]
    assert deltas[0]["item_id"] == "msg_abc"
    assert deltas[0]["logprobs"] == []
    assert seen[-1][1]["response"]["output"][0]["content"][0]["text"] == "a b"


def test_a_failure_mid_stream_is_response_failed() -> None:
    first = Chunk(id="chatcmpl-abc", created=5, model="m")
    encoder = replies.StreamEncoder(first, inbound.settings({}))
    encoder.encode(first)
    encoder.encode("partial")
    [(name, data)] = parsed(encoder.failed(UpstreamError("the upstream broke")))
    assert name == "response.failed"
    assert "error" not in data
    assert data["response"]["status"] == "failed"
    assert data["response"]["error"]["message"] == "the upstream broke"
    assert data["response"]["id"] == "resp_abc"


def test_an_unserved_item_type_is_named_and_echoed_within_bounds() -> None:
    kind = "x" * 20_000
    with pytest.raises(InvalidRequestError) as refused:
        inbound.parse_chat({"model": "m", "input": [{"type": kind}]})
    assert refused.value.param == "input[0].type"
    assert len(refused.value.message) < 500


# --- sealed reasoning, custom and namespace tools, safety_identifier


SEALER = Sealer.from_secret("unit tests' seal key")


def test_sealed_reasoning_is_the_next_assistant_messages_reasoning_and_signature() -> None:
    request = inbound.parse_chat(
        {
            "model": "m",
            "input": [
                {"role": "user", "content": "q"},
                {"type": "reasoning", "summary": [], "encrypted_content": SEALER.seal("hm", "sig")},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "r"},
            ],
        },
        sealer=SEALER,
    )
    assistant = request.messages[1]
    assert (assistant.reasoning_content, assistant.reasoning_signature) == ("hm", "sig")
    assert assistant.tool_calls[0].id == "c1"


def tampered(token: str) -> str:
    raw = bytearray(base64.b64decode(token))
    raw[len(raw) // 2] ^= 1
    return base64.b64encode(raw).decode()


@pytest.mark.parametrize(
    ("sealer", "token"),
    [
        (SEALER, Sealer.ephemeral().seal("secret", "sig")),
        (None, SEALER.seal("secret", "sig")),
        (SEALER, tampered(SEALER.seal("secret", "sig"))),
        (SEALER, "gAAAAABoOpenAIsOwnEncryptedReasoning=="),
        (SEALER, "not base64 at all!"),
    ],
    ids=["another-key", "no-sealer", "tampered", "openai-token", "not-base64"],
)
@pytest.mark.parametrize("text", ["the readable text", ""], ids=["with-text", "without"])
def test_an_encrypted_content_that_does_not_open_is_left_out_named_never_its_signature(
    sealer: Sealer | None, token: str, text: str
) -> None:
    content = [{"type": "reasoning_text", "text": text}] if text else []
    body = {
        "model": "m",
        "input": [
            {"role": "user", "content": "x"},
            {"type": "reasoning", "summary": [], "content": content, "encrypted_content": token},
            {"role": "assistant", "content": "a"},
        ],
    }
    left_out: list[str] = []
    assistant = inbound.parse_chat(body, sealer=sealer, left_out=left_out).messages[1]
    assert assistant.content == "a"
    assert not assistant.HasField("reasoning_signature")  # never a token's it did not open
    if text:
        assert assistant.reasoning_content == text
    else:
        assert not assistant.HasField("reasoning_content")
    assert "secret" not in str(assistant)
    assert left_out == ["input[].encrypted_content"]


def test_a_token_that_opens_is_not_named() -> None:
    body = {
        "model": "m",
        "input": [
            {"type": "reasoning", "encrypted_content": SEALER.seal("hm", None)},
            {"type": "reasoning", "encrypted_content": SEALER.seal("!", None)},
            {"role": "assistant", "content": "a"},
        ],
    }
    left_out: list[str] = []
    assert inbound.parse_chat(body, sealer=SEALER, left_out=left_out).messages[0].reasoning_content
    assert left_out == []


def test_a_tool_outputs_image_reaches_the_tool_message_and_its_sealed_part_is_named() -> None:
    image = "data:image/png;base64,iVBORw0KGgo="
    body = {
        "model": "m",
        "input": [
            {"role": "user", "content": "look"},
            {"type": "function_call", "call_id": "c1", "name": "view_image", "arguments": "{}"},
            {
                "type": "function_call_output",
                "call_id": "c1",
                "output": [
                    {"type": "input_text", "text": "the image:"},
                    {"type": "input_image", "image_url": image, "detail": "high"},
                    {"type": "encrypted_content", "encrypted_content": "gAAAAAB..."},
                ],
            },
            {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{}"},
            {
                "type": "function_call_output",
                "call_id": "c2",
                "output": [
                    {"type": "input_text", "text": "a"},
                    {"type": "input_text", "text": "b"},
                ],
            },
        ],
    }
    left_out: list[str] = []
    out = [MessageToDict(m) for m in inbound.parse_chat(body, left_out=left_out).messages]
    assert out[2] == {
        "role": "tool",
        "toolCallId": "c1",
        "parts": [
            {"type": "text", "text": "the image:"},
            {"type": "image_url", "imageUrl": {"url": image, "detail": "high"}},
        ],
    }
    assert out[4] == {"role": "tool", "toolCallId": "c2", "content": "ab"}
    assert left_out == ["input[].output[].encrypted_content"]
    # an OpenAI-compatible upstream takes text only in a tool message: the image is
    # held back, named
    held: list[str] = []
    request = inbound.parse_chat(body)
    sent = to_provider.encode_chat_request(request, "m", stream=False, left_out=held)
    assert sent["messages"][2] == {"role": "tool", "content": "the image:", "tool_call_id": "c1"}
    assert held == ["messages[tool].content[]"]


def test_custom_and_namespaced_calls_are_tool_calls_and_their_outputs_tool_messages() -> None:
    out = messages(
        {
            "input": [
                {"role": "user", "content": "q"},
                {"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch", "input": "P"},
                {
                    "type": "function_call",
                    "call_id": "c2",
                    "name": "read",
                    "namespace": "mcp__fs",
                    "arguments": "{}",
                },
                {"type": "custom_tool_call_output", "call_id": "c1", "output": "ok"},
                {"type": "function_call_output", "call_id": "c2", "output": "text"},
            ],
            "tool_choice": {"type": "custom", "name": "apply_patch"},
        }
    )
    calls = out[1]["toolCalls"]
    assert [c["function"]["name"] for c in calls] == ["apply_patch", "mcp__fs__read"]
    assert orjson.loads(calls[0]["function"]["arguments"]) == {"input": "P"}
    assert out[2:] == [
        {"role": "tool", "toolCallId": "c1", "content": "ok"},
        {"role": "tool", "toolCallId": "c2", "content": "text"},
    ]


def test_safety_identifier_is_the_user_unless_a_user_is_given() -> None:
    assert inbound.parse_chat({"model": "m", "input": "x", "safety_identifier": "s"}).user == "s"
    both = {"model": "m", "input": "x", "safety_identifier": "s", "user": "u"}
    assert inbound.parse_chat(both).user == "u"
    assert inbound.settings(both)["safety_identifier"] == "s"
    assert inbound.unread(both) == []


def test_a_completions_reasoning_is_sealed_and_its_calls_mapped_back() -> None:
    tools = [
        {"type": "custom", "name": "apply_patch"},
        {"type": "namespace", "name": "ns", "tools": [{"type": "function", "name": "f"}]},
    ]
    answer = completion(
        "tool_calls",
        reasoning_content="hm",
        reasoning_signature="sig",
        tool_calls=[("c1", "apply_patch", '{"input": "P"}'), ("c2", "ns__f", "{}")],
    )
    body = {"tools": tools}
    output = replies.encode_completion(
        answer, inbound.settings(body), names=inbound.tool_names(body), sealer=SEALER
    )["output"]
    reasoning, custom, namespaced = output
    assert SEALER.open(reasoning["encrypted_content"]) == ("hm", "sig")
    assert custom == {
        "id": "ctc_abc_0",
        "type": "custom_tool_call",
        "call_id": "c1",
        "name": "apply_patch",
        "input": "P",
        "status": "completed",
    }
    assert (namespaced["type"], namespaced["name"], namespaced["namespace"]) == (
        "function_call",
        "f",
        "ns",
    )


def test_a_streamed_signature_is_sealed_with_its_reasoning() -> None:
    first = Chunk(id="chatcmpl-abc", created=5, model="m")
    first.choices.add().delta.reasoning_content = "hm"
    signed = Chunk()
    signed.choices.add().delta.reasoning_signature = "sig"
    call = Chunk()
    piece = call.choices.add().delta.tool_calls.add(index=0, id="c1")
    piece.function.name, piece.function.arguments = "apply_patch", '{"input": "P"}'
    last = Chunk()
    last.choices.add(finish_reason="tool_calls")
    last.usage.prompt_tokens = 1
    names = inbound.tool_names({"tools": [{"type": "custom", "name": "apply_patch"}]})
    encoder = replies.StreamEncoder(first, inbound.settings({}), names=names, sealer=SEALER)
    seen = parsed(b"".join(encoder.encode(c) for c in (first, signed, call, last)))
    done = [data["item"] for name, data in seen if name == "response.output_item.done"]
    assert SEALER.open(done[0]["encrypted_content"]) == ("hm", "sig")
    assert done[1]["type"] == "custom_tool_call"
    kinds = [name for name, _ in seen]
    assert "response.function_call_arguments.delta" not in kinds
    assert kinds[-4:] == [
        "response.custom_tool_call_input.delta",
        "response.custom_tool_call_input.done",
        "response.output_item.done",
        "response.completed",
    ]


def test_an_input_file_is_a_file_part_sent_on_as_openais() -> None:
    pdf = "data:application/pdf;base64,JVBERi0x"
    part = {"type": "input_file", "file_data": pdf, "filename": "a.pdf"}
    text = {"type": "input_text", "text": "summarise"}
    request = inbound.parse_chat(
        {"model": "m", "input": [{"role": "user", "content": [text, part]}]}
    )
    [message] = request.messages
    assert message.parts[1].type == "file"
    assert (message.parts[1].file.file_data, message.parts[1].file.filename) == (pdf, "a.pdf")
    sent = to_provider.encode_chat_request(request, "u", stream=False)
    assert sent["messages"][0]["content"][1] == {
        "type": "file",
        "file": {"file_data": pdf, "filename": "a.pdf"},
    }


def test_reasoning_of_a_turn_that_ended_unanswered_goes_to_no_later_message() -> None:
    out = messages(
        {
            "input": [
                {"role": "user", "content": "q"},
                {"type": "reasoning", "content": [{"type": "reasoning_text", "text": "old"}]},
                {"role": "user", "content": "q again"},
                {"role": "assistant", "content": "a"},
            ]
        }
    )
    assert out[2] == {"role": "assistant", "content": "a"}


def test_a_namespaces_hosted_tools_are_named_unread() -> None:
    namespace = {
        "type": "namespace",
        "name": "ns",
        "tools": [{"type": "function", "name": "f"}, {"type": "tool_search"}],
    }
    body = {"model": "m", "input": "x", "tools": [namespace, {"type": "custom", "name": "c"}]}
    assert [t.function.name for t in inbound.parse_chat(body).tools] == ["ns__f", "c"]
    assert inbound.unread(body) == ["tools[].tool_search"]


def test_a_refusal_answered_whole_is_a_refusal_part_and_replays_as_refusal_events() -> None:
    answer = replies.encode_completion(completion(refusal="I can't help."), inbound.settings({}))
    [message] = answer["output"]
    assert message["content"] == [{"type": "refusal", "refusal": "I can't help."}]
    both = replies.encode_completion(
        completion(content="Well,", refusal="no."), inbound.settings({})
    )
    # the refusal in a message of its own, as streamed (Codex drops a message holding one)
    assert [[p["type"] for p in item["content"]] for item in both["output"]] == [
        ["output_text"],
        ["refusal"],
    ]
    assert len({item["id"] for item in both["output"]}) == 2
    names = [e.split("\n")[0] for e in stored.replay(both, []).decode().strip().split("\n\n")]
    assert names[2:-1] == [
        "event: response.output_item.added",
        "event: response.content_part.added",
        "event: response.output_text.delta",
        "event: response.output_text.done",
        "event: response.content_part.done",
        "event: response.output_item.done",
        "event: response.output_item.added",
        "event: response.content_part.added",
        "event: response.refusal.delta",
        "event: response.refusal.done",
        "event: response.content_part.done",
        "event: response.output_item.done",
    ]
