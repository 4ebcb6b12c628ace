"""Server-sent events as the suite's fake upstreams write them and its tests read them:
an event is an optional `event: NAME` line, then `data: JSON`, then a blank line."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
from aiohttp import web

__all__ = ["DONE", "named_events", "open_stream", "send"]

DONE = b"data: [DONE]\n\n"  # how an OpenAI-compatible stream ends


async def open_stream(request: web.Request) -> web.StreamResponse:
    """A `text/event-stream` answer to `request`, its head sent."""
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    return response


async def send(response: web.StreamResponse, data: Any, name: str = "") -> None:
    """One event of `data` as JSON, named `name` (a bare `data:` line when "", as
    OpenAI-compatible streams have it), in one write."""
    head = f"event: {name}\n".encode() if name else b""
    await response.write(head + b"data: " + orjson.dumps(data) + b"\n\n")


def named_events(response: httpx.Response) -> list[tuple[str, Any]]:
    """A whole stream's named events, in order: (name, data), each checked to be an
    `event:` line and a `data:` line."""
    out = []
    for event in response.text.strip().split("\n\n"):
        name, data = event.split("\n")
        assert name.startswith("event: "), event
        assert data.startswith("data: "), event
        out.append((name[7:], orjson.loads(data[6:])))
    return out
