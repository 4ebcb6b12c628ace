"""Folding a stream of chunks into one completion: the non-streaming answer."""

from __future__ import annotations

from collections.abc import AsyncIterator

from tandem.v1 import chat_pb2

from server.chunks import Batch, Item

__all__ = ["fold_stream"]


class _ChoiceFolder:
    __slots__ = ("choice", "reasoning", "refusal", "signature", "text", "tool_calls")

    def __init__(self, choice: chat_pb2.Choice) -> None:
        self.choice = choice
        self.text: list[str] = []
        self.refusal: list[str] | None = None
        self.reasoning: list[str] | None = None
        self.signature: str | None = None
        self.tool_calls: dict[int, chat_pb2.ToolCall] = {}

    def add(self, delta: chat_pb2.ChunkChoice) -> None:
        d = delta.delta
        if d.HasField("content"):
            self.text.append(d.content)
        if d.HasField("refusal"):
            self.refusal = (self.refusal or []) + [d.refusal]
        if d.HasField("reasoning_content"):
            if self.reasoning is None:
                self.reasoning = []
            self.reasoning.append(d.reasoning_content)
        if d.HasField("reasoning_signature"):  # one per thinking block; the last one is kept
            self.signature = d.reasoning_signature
        for piece in d.tool_calls:
            call = self.tool_calls.get(piece.index)
            if call is None:
                call = self.choice.message.tool_calls.add(
                    id=piece.id, type=piece.type or "function"
                )
                self.tool_calls[piece.index] = call
            elif piece.id:
                call.id = piece.id
            call.function.name += piece.function.name
            call.function.arguments += piece.function.arguments
        if delta.HasField("finish_reason"):
            self.choice.finish_reason = delta.finish_reason
        if delta.HasField("stop_sequence"):
            self.choice.stop_sequence = delta.stop_sequence
        if delta.HasField("logprobs"):
            self.choice.logprobs.content.extend(delta.logprobs.content)
            self.choice.logprobs.refusal.extend(delta.logprobs.refusal)

    def finish(self) -> None:
        message = self.choice.message
        if self.text or not self.tool_calls:
            message.content = "".join(self.text)
        if self.refusal is not None:
            message.refusal = "".join(self.refusal)
        if self.reasoning is not None:
            message.reasoning_content = "".join(self.reasoning)
        if self.signature is not None:
            message.reasoning_signature = self.signature


async def fold_stream(batches: AsyncIterator[Batch]) -> chat_pb2.ChatCompletion:
    """Concatenate every choice's deltas; usage comes from the chunk that has it."""
    completion = chat_pb2.ChatCompletion()
    folders: dict[int, _ChoiceFolder] = {}
    async for batch in batches:
        for chunk in batch:
            _fold(completion, folders, chunk)
    for folder in folders.values():
        folder.finish()
    return completion


def _fold(
    completion: chat_pb2.ChatCompletion, folders: dict[int, _ChoiceFolder], chunk: Item
) -> None:
    """One chunk into the completion (a stream's first is a chunk, never bare text)."""
    if isinstance(chunk, str):
        folder = folders.get(0) or _folder(completion, folders, 0, "")
        folder.text.append(chunk)
        return
    if not completion.id:
        completion.id = chunk.id
        completion.created = chunk.created
        completion.model = chunk.model
    if chunk.system_fingerprint:
        completion.system_fingerprint = chunk.system_fingerprint
    for delta in chunk.choices:
        folder = folders.get(delta.index) or _folder(
            completion, folders, delta.index, delta.delta.role
        )
        folder.add(delta)
    if chunk.HasField("usage"):
        completion.usage.CopyFrom(chunk.usage)


def _folder(
    completion: chat_pb2.ChatCompletion, folders: dict[int, _ChoiceFolder], index: int, role: str
) -> _ChoiceFolder:
    choice = completion.choices.add(index=index)
    choice.message.role = role or "assistant"
    folder = folders[index] = _ChoiceFolder(choice)
    return folder
