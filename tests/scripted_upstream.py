"""An upstream that answers what a test scripts: a real aiohttp server on 127.0.0.1:0, in
its own thread, speaking OpenAI's chat completions (`/v1/chat/completions`) and
Anthropic's Messages API (`/v1/messages`).

Each request takes the next `Turn` of the script (an error once it is empty): its
whole answer, or its stream of events when the request streams. The helpers below
make the turns the Responses door's tests need (a function call, an Anthropic
thinking block signed, then a tool use). Every request's JSON body is recorded.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.served import AppServer
from tests.sse import DONE, open_stream, send

__all__ = [
    "ScriptedUpstream",
    "Turn",
    "anthropic_text",
    "anthropic_thinking_then_tool",
    "openai_chunks",
    "openai_text",
    "openai_tool_call",
]


@dataclass
class Turn:
    """One answer: `whole` (a JSON body) or, streamed, `events` (SSE `(name, data)`
    pairs; a name of "" writes a bare `data:` line, as OpenAI does)."""

    whole: Any
    events: list[tuple[str, Any]]


@dataclass
class ScriptedUpstream(AppServer):
    script: deque[Turn] = field(default_factory=deque)
    bodies: list[Any] = field(default_factory=list)

    def reset(self, *turns: Turn) -> None:
        self.script = deque(turns)
        self.bodies.clear()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._answer)
        app.router.add_post("/v1/messages", self._answer)
        return app

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.bodies.append(body)
        if not self.script:
            return web.json_response({"error": {"message": "unscripted"}}, status=500)
        turn = self.script.popleft()
        if not body.get("stream"):
            return web.json_response(turn.whole)
        response = await open_stream(request)
        for name, data in turn.events:
            await send(response, data, name)
        if turn.events and not turn.events[0][0]:  # OpenAI's stream ends so
            await response.write(DONE)
        return response


def openai_tool_call(name: str, arguments: str, call_id: str = "call_1") -> Turn:
    """An OpenAI-compatible answer calling `name`; streamed, its arguments in two pieces."""
    usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    head = {"id": "up-1", "created": 1, "model": "m"}
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    whole = {
        **head,
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                "finish_reason": "tool_calls",
            }
        ],
        "usage": usage,
    }

    def chunk(delta: Any, finish: str | None = None, **more: Any) -> tuple[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return "", {**head, "object": "chat.completion.chunk", "choices": [choice], **more}

    half = len(arguments) // 2
    opened = {**call, "index": 0, "function": {"name": name, "arguments": arguments[:half]}}
    rest = {"index": 0, "function": {"arguments": arguments[half:]}}
    events = [
        chunk({"role": "assistant", "tool_calls": [opened]}),
        chunk({"tool_calls": [rest]}),
        chunk({}, "tool_calls"),
        ("", {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage}),
    ]
    return Turn(whole, events)


def openai_chunks(message: Any, *steps: tuple[Any, str | None]) -> Turn:
    """An OpenAI-compatible answer: whole, `message` (finished `stop`); streamed, a chunk
    per step (its delta and finish_reason, in the order given, even a delta after a
    finish_reason), then the usage's chunk."""
    usage = {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
    head = {"id": "up-3", "created": 1, "model": "m"}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    whole = {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
    events: list[tuple[str, Any]] = [
        ("", {**head, "object": "chat.completion.chunk", "choices": [step]})
        for step in ({"index": 0, "delta": d, "finish_reason": f} for d, f in steps)
    ]
    events.append(("", {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage}))
    return Turn(whole, events)


def openai_text(text: str) -> Turn:
    """An OpenAI-compatible answer of `text` (whole only)."""
    message = {"role": "assistant", "content": text}
    whole = {
        "id": "up-2",
        "created": 1,
        "model": "m",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
    return Turn(whole, [])


def anthropic_thinking_then_tool(
    thinking: str, signature: str, name: str, arguments: Any, tool_id: str = "toolu_1"
) -> Turn:
    """An Anthropic answer: a thinking block signed `signature`, then a `tool_use`."""
    usage = {"input_tokens": 9, "output_tokens": 4}
    message = {"id": "msg_up", "type": "message", "role": "assistant", "model": "m"}
    blocks = [
        {"type": "thinking", "thinking": thinking, "signature": signature},
        {"type": "tool_use", "id": tool_id, "name": name, "input": arguments},
    ]
    whole = {**message, "content": blocks, "stop_reason": "tool_use", "usage": usage}
    events: list[tuple[str, Any]] = [
        ("message_start", {"message": {**message, "content": [], "usage": usage}}),
        (
            "content_block_start",
            {"index": 0, "content_block": {"type": "thinking", "thinking": ""}},
        ),
        (
            "content_block_delta",
            {"index": 0, "delta": {"type": "thinking_delta", "thinking": thinking}},
        ),
        (
            "content_block_delta",
            {"index": 0, "delta": {"type": "signature_delta", "signature": signature}},
        ),
        ("content_block_stop", {"index": 0}),
        (
            "content_block_start",
            {
                "index": 1,
                "content_block": {"type": "tool_use", "id": tool_id, "name": name, "input": {}},
            },
        ),
        (
            "content_block_delta",
            {
                "index": 1,
                "delta": {
                    "type": "input_json_delta",
                    "partial_json": orjson.dumps(arguments).decode(),
                },
            },
        ),
        ("content_block_stop", {"index": 1}),
        ("message_delta", {"delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 4}}),
        ("message_stop", {}),
    ]
    return Turn(whole, [(name_, {"type": name_, **data}) for name_, data in events])


def anthropic_text(text: str) -> Turn:
    """An Anthropic answer of one text block (whole only)."""
    whole = {
        "id": "msg_up2",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 9, "output_tokens": 1},
    }
    return Turn(whole, [])
