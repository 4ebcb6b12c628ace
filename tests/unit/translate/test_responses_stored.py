"""Stored responses in the Responses API's shapes: a replay is the stream first sent
(whatever its deltas' split), the input kept with stable ids, `item_reference`s
resolved, and the `input_items` page."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from tandem.v1 import chat_pb2

from server.chunks import Chunk, Item
from server.errors import InvalidRequestError
from server.translate.responses import inbound, replies, stored

JSON = dict[str, Any]


async def encoded(items: list[Item], settings: JSON) -> tuple[bytes, JSON, list[list[int]]]:
    """A stream through the encoder with a store hook: its bytes, and what the hook got."""
    got: list[tuple[JSON, list[list[int]]]] = []

    async def on_done(answer: JSON, splits: Sequence[Sequence[int]]) -> None:
        got.append((answer, [list(s) for s in splits]))

    first = items[0]
    assert isinstance(first, Chunk)
    encoder = replies.StreamEncoder(first, settings, on_done)
    wire = b"".join(encoder(item) for item in items)
    assert not got  # the last event waits for `finish`
    assert b"response.completed" not in wire
    wire += await encoder.finish()
    [(answer, splits)] = got
    return wire, answer, splits


def text_stream() -> list[Item]:
    first = Chunk(id="chatcmpl-abc", created=5, model="m")
    first.choices.add().delta.role = "assistant"
    thinking = Chunk()
    thinking.choices.add().delta.reasoning_content = "hm, "
    more = Chunk()
    more.choices.add().delta.reasoning_content = "ok"
    last = Chunk()
    last.choices.add(finish_reason="stop")
    last.usage.prompt_tokens, last.usage.completion_tokens = 1, 3
    return [first, thinking, more, "a ", "b ", "", "c", last]


def tool_stream() -> list[Item]:
    first = Chunk(id="chatcmpl-t", created=5, model="m")
    first.choices.add().delta.content = "calling"
    chunks = [first]
    for index, call_id, name, pieces in (
        (0, "call_a", "f", ['{"x"', ": 1}"]),
        (1, "call_b", "g", []),
    ):
        head = Chunk()
        head.choices.add().delta.tool_calls.add(
            index=index, id=call_id, type="function", function=chat_pb2.FunctionCall(name=name)
        )
        chunks.append(head)
        for piece in pieces:
            part = Chunk()
            part.choices.add().delta.tool_calls.add(
                index=index, function=chat_pb2.FunctionCall(arguments=piece)
            )
            chunks.append(part)
    last = Chunk()
    last.choices.add(finish_reason="tool_calls")
    last.usage.prompt_tokens = 2
    return [*chunks, last]


def late_text_stream() -> list[Item]:
    """A tool call, its finish_reason, then text (an upstream's, late), then the usage."""
    first = Chunk(id="chatcmpl-late", created=5, model="m")
    first.choices.add().delta.tool_calls.add(
        index=0, id="call_a", type="function", function=chat_pb2.FunctionCall(name="f")
    )
    finished = Chunk()
    finished.choices.add(finish_reason="tool_calls")
    late = Chunk()
    late.choices.add().delta.content = "late"
    usage = Chunk()
    usage.usage.prompt_tokens = 2
    return [first, finished, late, " text", usage]


def refusal_stream() -> list[Item]:
    first = Chunk(id="chatcmpl-r", created=5, model="m")
    first.choices.add().delta.refusal = "I can't "
    more = Chunk()
    more.choices.add().delta.refusal = "help with that."
    last = Chunk()
    last.choices.add(finish_reason="stop")
    last.usage.prompt_tokens = 2
    return [first, more, last]


def text_then_refusal_stream() -> list[Item]:
    first = Chunk(id="chatcmpl-tr", created=5, model="m")
    first.choices.add().delta.content = "Well, "
    refused = Chunk()
    refused.choices.add(finish_reason="stop").delta.refusal = "no."
    refused.usage.prompt_tokens = 2
    return [first, refused]


def named(wire: bytes) -> list[tuple[str, Any]]:
    return [
        (
            head.split(b"\n")[0].removeprefix(b"event: ").decode(),
            orjson.loads(head.split(b"data: ")[1]),
        )
        for head in wire.strip().split(b"\n\n")
    ]


STREAMS = [text_stream, tool_stream, late_text_stream, refusal_stream, text_then_refusal_stream]


@pytest.mark.parametrize("stream", STREAMS)
async def test_a_replay_is_the_stream_first_sent(stream: Any) -> None:
    settings = {**inbound.settings({"metadata": {"k": "v"}}), "store": True}
    wire, answer, splits = await encoded(stream(), settings)
    assert stored.replay(answer, splits) == wire
    events = wire.strip().split(b"\n\n")
    assert stored.replay(answer, splits, starting_after=3) == b"\n\n".join(events[4:]) + b"\n\n"
    assert stored.replay(answer, splits, starting_after=len(events)) == b""


async def test_the_splits_are_what_each_delta_carried() -> None:
    _, _, splits = await encoded(text_stream(), inbound.settings({}))
    assert splits == [[4, 2], [2, 2, 1]]


def test_a_response_answered_whole_replays_with_one_delta_an_item() -> None:
    completion = chat_pb2.ChatCompletion(id="chatcmpl-w", created=1, model="m")
    completion.choices.add(finish_reason="stop").message.content = "all at once"
    answer = replies.encode_completion(completion, inbound.settings({}))
    events = stored.replay(answer, []).decode().strip().split("\n\n")
    deltas = [e for e in events if e.startswith("event: response.output_text.delta")]
    assert len(deltas) == 1
    assert '"delta":"all at once"' in deltas[0]
    assert events[-1].startswith("event: response.completed")


def test_the_input_kept_has_an_id_on_every_item_stable_and_distinct() -> None:
    given = [
        {"role": "user", "content": "q"},
        {"type": "message", "role": "assistant", "content": "a", "id": "msg_given"},
        {"type": "function_call_output", "call_id": "c", "output": "o"},
    ]
    kept = stored.own_input(given, "resp_abc")
    assert kept == stored.own_input(given, "resp_abc")
    assert [item["id"] for item in kept] == ["msg_abc_in0", "msg_given", "item_abc_in2"]
    assert kept[0]["content"] == [{"type": "input_text", "text": "q"}]
    assert kept[1]["content"] == [{"type": "output_text", "text": "a"}]
    assert given[0] == {"role": "user", "content": "q"}  # the caller's left as it was
    [single] = stored.own_input("hi", "resp_abc")
    assert single == {
        "role": "user",
        "content": [{"type": "input_text", "text": "hi"}],
        "type": "message",
        "id": "msg_abc_in0",
    }


def test_item_references_are_replaced_by_the_stored_items() -> None:
    given = [{"type": "item_reference", "id": "msg_1"}, {"role": "user", "content": "q"}]
    assert stored.references(given) == ["msg_1"]
    assert stored.references("text") == []
    item = {"type": "message", "role": "assistant", "content": "a", "id": "msg_1"}
    assert stored.resolve_references(given, {"msg_1": item}) == [item, given[1]]
    with pytest.raises(InvalidRequestError) as refused:
        stored.resolve_references(given, {})
    assert refused.value.param == "input[0].id"
    with pytest.raises(InvalidRequestError):
        stored.references([{"type": "item_reference", "id": 3}])


def test_the_input_items_page_newest_first_with_after_and_order() -> None:
    items = [{"id": f"i{n}"} for n in range(5)]
    page = stored.input_page(items, None, None, None)
    assert [i["id"] for i in page["data"]] == ["i4", "i3", "i2", "i1", "i0"]
    assert (page["first_id"], page["last_id"], page["has_more"]) == ("i4", "i0", False)
    page = stored.input_page(items, "2", "i4", "desc")
    assert ([i["id"] for i in page["data"]], page["has_more"]) == (["i3", "i2"], True)
    page = stored.input_page(items, "2", "i2", "asc")
    assert ([i["id"] for i in page["data"]], page["has_more"]) == (["i3", "i4"], False)
    assert stored.input_page([], None, None, None) == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }
    for limit, after, order, param in (
        ("0", None, None, "limit"),
        ("101", None, None, "limit"),
        ("x", None, None, "limit"),
        (None, "nope", None, "after"),
        (None, None, "up", "order"),
    ):
        with pytest.raises(InvalidRequestError) as refused:
            stored.input_page(items, limit, after, order)
        assert refused.value.param == param


@pytest.mark.parametrize(
    ("item_id", "why"),
    [
        ("msg_\x00", "without NUL"),
        ("x" * 257, "at most 256"),
        ("bad_\ud800", "without NUL"),  # not UTF-8: no store can keep it
        (7, "must be a string"),
    ],
)
def test_a_caller_item_id_a_store_cannot_keep_is_a_400_naming_it(item_id: Any, why: str) -> None:
    given = [{"role": "user", "content": "q", "id": "ok"}, {"type": "message", "id": item_id}]
    with pytest.raises(InvalidRequestError) as refused:
        stored.check_input(given)
    assert refused.value.param == "input[1].id"
    assert why in refused.value.message


def test_an_input_of_too_many_items_is_a_400_and_its_given_ids_are_known() -> None:
    fine = [{"role": "user", "content": "q", "id": "x" * 256}, {"role": "user", "content": "r"}]
    stored.check_input(fine)
    stored.check_input("text")
    assert stored.given_ids(fine) == {"x" * 256}
    assert stored.given_ids("text") == set()
    with pytest.raises(InvalidRequestError) as refused:
        stored.check_input([{"role": "user", "content": "q"}] * (stored.MAX_INPUT_ITEMS + 1))
    assert refused.value.param == "input"


@pytest.mark.parametrize("stream", STREAMS)
async def test_every_item_added_is_done_and_in_the_output(stream: Any) -> None:
    wire, answer, _ = await encoded(stream(), inbound.settings({}))
    events = named(wire)
    added = [d["item"]["id"] for name, d in events if name == "response.output_item.added"]
    done = [d["item"] for name, d in events if name == "response.output_item.done"]
    assert [item["id"] for item in done] == added
    assert answer["output"] == done
    assert [name for name, _ in events].count("response.content_part.added") == [
        name for name, _ in events
    ].count("response.content_part.done")


async def test_text_after_the_finish_reason_is_an_item_closed_before_completed() -> None:
    wire, answer, _ = await encoded(late_text_stream(), inbound.settings({}))
    kinds = [item["type"] for item in answer["output"]]
    assert kinds == ["function_call", "message"]
    assert answer["output"][1]["content"][0]["text"] == "late text"
    assert named(wire)[-1][0] == "response.completed"


async def test_a_refusal_is_a_refusal_part_streamed_as_refusal_events() -> None:
    wire, answer, splits = await encoded(refusal_stream(), inbound.settings({}))
    [message] = answer["output"]
    assert message["content"] == [{"type": "refusal", "refusal": "I can't help with that."}]
    assert splits == [[8, 15]]
    events = named(wire)
    assert [name for name, _ in events[2:-1]] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.refusal.delta",
        "response.refusal.delta",
        "response.refusal.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert events[3][1]["part"] == {"type": "refusal", "refusal": ""}
    assert events[6][1]["refusal"] == "I can't help with that."
