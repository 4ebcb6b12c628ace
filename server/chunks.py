"""What a chat stream carries: chunks, and the bare text of the commonest one.

Most of a stream is chunks whose one field is choice 0's `delta.content`.
A provider may yield such a chunk as that text, a `str`: it costs no message
to build, stamp, read or encode, and every door writes it from the text alone
(the bench: a 21-chunk stream's CPU from 0.61 to 0.53 ms). The first item of
a stream is always a chunk: it carries the id, time, model and fingerprint
that the doors write on every event.
"""

from __future__ import annotations

from collections.abc import Sequence

from tandem.v1 import chat_pb2

__all__ = ["Batch", "Chunk", "Item", "stamped", "text_chunk", "whole"]

Chunk = chat_pb2.ChatCompletionChunk
Item = Chunk | str  # a str: a chunk whose one field is choices[0].delta.content
Batch = Sequence[Item]  # what one upstream read brought, never empty


def text_chunk(text: str) -> Chunk:
    """The chunk a text item stands for."""
    chunk = Chunk()
    chunk.choices.add().delta.content = text
    return chunk


def whole(item: Item) -> Chunk:
    """An item as a chunk: a text item as the one it stands for."""
    return text_chunk(item) if isinstance(item, str) else item


def stamped(text: str, head: Chunk) -> Chunk:
    """The chunk a text item stands for, with `head`'s id, time, model and fingerprint."""
    chunk = text_chunk(text)
    chunk.id, chunk.created, chunk.model = head.id, head.created, head.model
    if head.system_fingerprint:
        chunk.system_fingerprint = head.system_fingerprint
    return chunk
