"""Stored responses in the Responses API's shapes: the input items kept (each with an
id), `item_reference`s, the `input_items` page, and a stored response's events again.

A replay (`GET /v1/responses/{id}?stream=true`) regenerates the stream from the
stored response and how its text arrived (`splits`: per output item, the length of
each delta the encoder sent, replies.StreamEncoder), so ids, indexes and sequence
numbers are those first sent, and `starting_after` resumes a cut stream. A response
answered whole replays with one delta per item.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from server.store.conversations import MAX_ID_CHARS, storable_id
from server.translate.common import invalid_field, named_event, string_at
from server.translate.protocols import JSON

__all__ = [
    "MAX_INPUT_ITEMS",
    "MAX_PAGE",
    "check_input",
    "given_ids",
    "input_page",
    "own_input",
    "references",
    "replay",
    "resolve_references",
]

MAX_INPUT_ITEMS = 10_000  # in one request's `input`; a conversation continues by its id
MAX_PAGE = 100
DEFAULT_PAGE = 20
_TEXT_PART = {"user": "input_text", "system": "input_text", "developer": "input_text"}


def own_input(value: Any, response_id: str) -> list[JSON]:
    """A request's `input` (parsed already) as the items kept: a string is one user
    message; a message's string content one text part; an item without an id is given
    one, stable as it is stored."""
    base = response_id.removeprefix("resp_")
    items = [{"role": "user", "content": value}] if isinstance(value, str) else value
    out = []
    for i, item in enumerate(items):
        kept = dict(item)
        kind = kept.setdefault("type", "message")
        if kind == "message" and isinstance(kept.get("content"), str):
            part = _TEXT_PART.get(kept.get("role", ""), "output_text")
            kept["content"] = [{"type": part, "text": kept["content"]}]
        if not isinstance(kept.get("id"), str):
            kept["id"] = f"{'msg' if kind == 'message' else 'item'}_{base}_in{i}"
        out.append(kept)
    return out


def check_input(value: Any) -> None:
    """An `input`'s bounds, checked before anything is asked of the store or upstream:
    `MAX_INPUT_ITEMS` items at most, and each id the caller gives one the store can
    keep and index (`MAX_ID_CHARS` at most, no NUL, valid UTF-8), or a 400 naming it."""
    if not isinstance(value, list):
        return
    if len(value) > MAX_INPUT_ITEMS:
        raise invalid_field(
            "input",
            f"{len(value):,} items; at most {MAX_INPUT_ITEMS:,} (continue a conversation "
            "with previous_response_id)",
        )
    for i, item in enumerate(value):
        name = item.get("id") if isinstance(item, dict) else None
        if name is None:
            continue
        if not isinstance(name, str):
            raise invalid_field(f"input[{i}].id", "must be a string")
        if not storable_id(name):
            raise invalid_field(
                f"input[{i}].id", f"must be at most {MAX_ID_CHARS} characters of UTF-8, without NUL"
            )


def given_ids(value: Any) -> set[str]:
    """The ids the caller gave its input items (after `check_input`)."""
    if not isinstance(value, list):
        return set()
    return {
        item["id"] for item in value if isinstance(item, dict) and isinstance(item.get("id"), str)
    }


def references(value: Any) -> list[str]:
    """The ids of the `item_reference` items of an `input`."""
    if not isinstance(value, list):
        return []
    return [
        string_at(item.get("id"), f"input[{i}].id")
        for i, item in enumerate(value)
        if isinstance(item, dict) and item.get("type") == "item_reference"
    ]


def resolve_references(value: Any, found: Mapping[str, JSON]) -> Any:
    """`input` with each `item_reference` replaced by the stored item (a 400 if none)."""
    if not isinstance(value, list):
        return value
    out = []
    for i, item in enumerate(value):
        if isinstance(item, dict) and item.get("type") == "item_reference":
            stored = found.get(item["id"])
            if stored is None:
                raise invalid_field(f"input[{i}].id", "no stored item has this id")
            item = stored
        out.append(item)
    return out


def input_page(items: list[JSON], limit: Any, after: Any, order: Any) -> JSON:
    """One page of a response's input items (`GET .../input_items`), newest first unless
    `order=asc`, `limit` 1 to 100 (20), from the item after `after`."""
    if order not in (None, "asc", "desc"):
        raise invalid_field("order", 'must be "asc" or "desc"')
    try:
        size = DEFAULT_PAGE if limit is None else int(limit)
    except ValueError:
        size = 0
    if not 1 <= size <= MAX_PAGE:
        raise invalid_field("limit", f"must be an integer from 1 to {MAX_PAGE}")
    ordered = items if order == "asc" else items[::-1]
    start = 0
    if after is not None:
        ids = [item.get("id") for item in ordered]
        if after not in ids:
            raise invalid_field("after", "is not an item of this response")
        start = ids.index(after) + 1
    data = ordered[start : start + size]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": start + size < len(ordered),
    }


_SNAPSHOT_RESET = {"status": "in_progress", "incomplete_details": None, "usage": None}


def _pieces(text: str, split: Sequence[int] | None) -> Iterator[str]:
    if split is None:  # answered whole: one delta, none for no text
        if text:
            yield text
        return
    at = 0
    for length in split:
        yield text[at : at + length]
        at += length


# per part type: its delta and done events, the key its text is under, and what
# else each of them says
_PART_EVENTS: dict[str, tuple[str, str, str, JSON]] = {
    "output_text": (
        "response.output_text.delta",
        "response.output_text.done",
        "text",
        {"logprobs": []},
    ),
    "refusal": ("response.refusal.delta", "response.refusal.done", "refusal", {}),
    "reasoning_text": (
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "text",
        {},
    ),
}


def _part_events(
    kind: str, part: JSON, at: JSON, split: Sequence[int] | None
) -> Iterator[tuple[str, JSON]]:
    """One content part's events: added, its deltas (as `split`), their done, its done."""
    of = part.get("type")
    if of not in _PART_EVENTS:
        of = "output_text" if kind == "message" else "reasoning_text"
    delta, done, key, extra = _PART_EVENTS[of]
    text = part.get(key, "")
    opened = {**part, key: ""} if kind == "message" else {"type": of, key: ""}
    yield (
        "response.content_part.added",
        {"type": "response.content_part.added", **at, "part": opened},
    )
    for piece in _pieces(text, split):
        yield delta, {"type": delta, **at, **extra, "delta": piece}
    yield done, {"type": done, **at, key: text, **extra}
    yield (
        "response.content_part.done",
        {"type": "response.content_part.done", **at, "part": part},
    )


def _events(response: JSON, splits: Sequence[Sequence[int]]) -> Iterator[tuple[str, JSON]]:
    """The events a stream of `response` sent, in order, without sequence numbers."""
    created = {**response, **_SNAPSHOT_RESET, "output": []}
    yield "response.created", {"type": "response.created", "response": created}
    yield "response.in_progress", {"type": "response.in_progress", "response": created}
    for index, item in enumerate(response["output"]):
        split = splits[index] if index < len(splits) else None
        kind = item.get("type")
        added = dict(item)
        if "status" in added:
            added["status"] = "in_progress"
        where = {"item_id": item.get("id"), "output_index": index}
        if kind in ("message", "reasoning") and item.get("content"):
            added["content"] = []
        if kind == "function_call":
            added["arguments"] = ""
        elif kind == "custom_tool_call":
            added["input"] = ""
        elif kind == "reasoning":
            added.pop("encrypted_content", None)  # sealed as the item closes
        yield (
            "response.output_item.added",
            {
                "type": "response.output_item.added",
                "output_index": index,
                "item": added,
            },
        )
        if kind in ("message", "reasoning"):
            parts = item.get("content") or []
            split = split if len(parts) == 1 else None  # a stream's items have one part
            for at, part in enumerate(parts):
                yield from _part_events(kind, part, {**where, "content_index": at}, split)
        elif kind == "function_call":
            arguments = item.get("arguments", "")
            name = "response.function_call_arguments.delta"
            for piece in _pieces(arguments, split):
                yield name, {"type": name, **where, "delta": piece}
            yield (
                "response.function_call_arguments.done",
                {
                    "type": "response.function_call_arguments.done",
                    **where,
                    "name": item.get("name"),
                    "arguments": arguments,
                },
            )
        elif kind == "custom_tool_call":  # its input whole: one delta (none if empty)
            text = item.get("input", "")
            name = "response.custom_tool_call_input.delta"
            if text:
                yield name, {"type": name, **where, "delta": text}
            yield (
                "response.custom_tool_call_input.done",
                {"type": "response.custom_tool_call_input.done", **where, "input": text},
            )
        yield (
            "response.output_item.done",
            {
                "type": "response.output_item.done",
                "output_index": index,
                "item": item,
            },
        )
    last = f"response.{response.get('status', 'completed')}"
    yield last, {"type": last, "response": response}


def replay(response: JSON, splits: Sequence[Sequence[int]], starting_after: int = -1) -> bytes:
    """The stored response's events after `starting_after`, as first sent."""
    out = []
    for seq, (name, data) in enumerate(_events(response, splits)):
        if seq > starting_after:
            data["sequence_number"] = seq
            out.append(named_event(name, data))
    return b"".join(out)
