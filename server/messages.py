"""Reading text out of chat messages, and the gateway's token estimate of it.

The estimate (pinned by the contract) is max(words, ceil(UTF-8 bytes / 4)):
words alone would call a 1 MB word one token; bytes / 4 is about what
tokenizers make of English, and never less than one token per word.
"""

from __future__ import annotations

from collections.abc import Iterable

from tandem.v1 import chat_pb2

__all__ = [
    "count_words",
    "estimate_tokens",
    "last_user_text",
    "message_text",
    "prompt_words",
]


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
    """Whitespace-separated words over every message's text (the mock's count)."""
    return sum(count_words(message_text(m)) for m in messages)


def estimate_tokens(text: str) -> int:
    """The gateway's estimate of a text's tokens: max(words, ceil(UTF-8 bytes / 4))."""
    return max(len(text.split()), -(-len(text.encode("utf-8", "surrogatepass")) // 4))
