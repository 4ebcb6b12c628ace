"""The Anthropic door's parser in process: a cache mark that does not fit is refused by
where it was written (the marks through real doors: tests/test_prompt_caching.py)."""

from __future__ import annotations

from typing import Any

import pytest

from server.errors import InvalidRequestError
from server.translate.anthropic.inbound import parse_messages


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"system": [{"type": "text", "text": "x", "cache_control": "yes"}]},
            "system[0].cache_control",
        ),
        ({"tools": [{"name": "f", "cache_control": {"ttl": "1h"}}]}, "tools[0].cache_control.type"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "text",
                                "text": "x",
                                "cache_control": {"type": "ephemeral", "ttl": 5},
                            }
                        ],
                    }
                ]
            },
            "messages[0].content[0].cache_control.ttl",
        ),
        (
            {"system": [{"type": "text", "text": "x", "cache_control": {"type": "forever"}}]},
            "system[0].cache_control.type",
        ),
        (
            {"tools": [{"name": "f", "cache_control": {"type": "ephemeral", "ttl": "1 week"}}]},
            "tools[0].cache_control.ttl",
        ),
    ],
)
def test_an_unfit_mark_is_refused_by_where_it_was_written(body: dict[str, Any], param: str) -> None:
    request = {
        "model": "m",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "x"}],
        **body,
    }
    with pytest.raises(InvalidRequestError) as refused:
        parse_messages(request)
    assert refused.value.param == param
