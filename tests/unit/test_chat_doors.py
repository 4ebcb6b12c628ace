"""`tandem chat --http` reads the native door's SSE: anything else is one ChatError line."""

from __future__ import annotations

import pytest

from server.chat_doors import ChatError, _content


def test_a_chunk_gives_its_first_choices_text() -> None:
    chunk = '{"choices": [{"index": 0, "delta": {"content": "hi "}}]}'
    assert _content(chunk) == "hi "
    assert _content('{"choices": [{"index": 1, "delta": {"content": "x"}}]}') is None
    assert _content('{"choices": [], "usage": {"total_tokens": 3}}') is None


@pytest.mark.parametrize(
    ("data", "said"),
    [
        ('{"error": {"message": "upstream failed", "type": "upstream_error"}}', "upstream failed"),
        ('{"error": "plain words"}', "plain words"),
        ("not json", "not a chunk"),
        ('{"choices": "nope"}', "not a chunk"),
        ("[1, 2]", "not a chunk"),
    ],
)
def test_anything_else_is_one_chat_error(data: str, said: str) -> None:
    with pytest.raises(ChatError, match=said):
        _content(data)
