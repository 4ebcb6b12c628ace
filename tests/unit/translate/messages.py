"""Messages the dialects' tests share, each dialect asserting its own translation."""

from __future__ import annotations

from typing import Any

__all__ = ["image_then_tool_call"]


def image_then_tool_call(call_id: str, arguments: str) -> list[dict[str, Any]]:
    """A user's text and PNG image (`QUJD` in base64), then the assistant's call of tool
    `f` with these `arguments`: the OpenAI spelling of what every dialect must carry."""
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "see"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "f", "arguments": arguments},
                }
            ],
        },
    ]
