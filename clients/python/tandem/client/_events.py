"""The typed events of a streamed chat, read from its chunks.

A chunk's choice may carry reasoning, text, a refusal, pieces of tool calls and its
finish reason, in that order; the last chunk carries the usage, the stream's last event.
`index` is the choice's (0 unless `n` asked for more).
"""

from __future__ import annotations

from dataclasses import dataclass

from tandem.v1 import chat_pb2

__all__ = [
    "ChatEvent",
    "Finished",
    "ReasoningDelta",
    "RefusalDelta",
    "TextDelta",
    "ToolCallDelta",
    "UsageEvent",
    "events_of",
]


@dataclass(frozen=True, slots=True)
class TextDelta:
    """The next piece of a choice's answer."""

    text: str
    index: int = 0


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """The next piece of a choice's reasoning (`reasoning_content`), before its answer."""

    text: str
    index: int = 0


@dataclass(frozen=True, slots=True)
class RefusalDelta:
    """The next piece of a choice's refusal."""

    text: str
    index: int = 0


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a tool call: the call at `call_index` of choice `index`. Its first piece
    names it (`id`, `name`); `arguments` arrive in pieces to be joined in order."""

    index: int
    call_index: int
    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Finished:
    """Choice `index` is done: `finish_reason` is `stop`, `length`, `tool_calls`, ..."""

    index: int
    finish_reason: str


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """The tokens the call used: the stream's last event."""

    usage: chat_pb2.Usage


ChatEvent = TextDelta | ReasoningDelta | RefusalDelta | ToolCallDelta | Finished | UsageEvent


def events_of(chunk: chat_pb2.ChatCompletionChunk) -> list[ChatEvent]:
    """The events one chunk carries, in order."""
    events: list[ChatEvent] = []
    for choice in chunk.choices:
        delta, index = choice.delta, choice.index
        if delta.reasoning_content:
            events.append(ReasoningDelta(delta.reasoning_content, index))
        if delta.content:
            events.append(TextDelta(delta.content, index))
        if delta.refusal:
            events.append(RefusalDelta(delta.refusal, index))
        for call in delta.tool_calls:
            function = call.function
            events.append(
                ToolCallDelta(index, call.index, call.id, function.name, function.arguments)
            )
        if choice.finish_reason:
            events.append(Finished(index, choice.finish_reason))
    if chunk.HasField("usage"):
        events.append(UsageEvent(chunk.usage))
    return events
