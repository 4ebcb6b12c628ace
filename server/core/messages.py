"""Reading text out of chat messages, shared by providers and token estimates."""

from __future__ import annotations

from collections.abc import Iterable

from tandem.v1 import chat_pb2

__all__ = ["count_words", "last_user_text", "message_text", "prompt_words"]


def message_text(message: chat_pb2.ChatMessage) -> str:
    """The message's text: `content`, or its text parts one per line."""
    if message.HasField("content"):
        return message.content
    return "\n".join(part.text for part in message.parts if part.WhichOneof("part") == "text")


def last_user_text(messages: Iterable[chat_pb2.ChatMessage]) -> str:
    text = ""
    for message in messages:
        if message.role == "user":
            text = message_text(message)
    return text


def count_words(text: str) -> int:
    return len(text.split())


def prompt_words(messages: Iterable[chat_pb2.ChatMessage]) -> int:
    """Whitespace-separated words over every message's text."""
    return sum(count_words(message_text(m)) for m in messages)
