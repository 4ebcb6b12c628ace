"""An OpenAI-compatible chat-completions upstream for an agent's run: a real aiohttp
server on 127.0.0.1:0, in its own thread. It records every request's body and answers
what `answer(body)` says: a text, or one call of a tool, after a reasoning text if the
call has one (streamed when asked to stream, with the usage last when
`stream_options.include_usage` asks for it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from tests.served import AppServer
from tests.sse import DONE, open_stream, send

__all__ = ["Answer", "ChatUpstream", "ToolCall"]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text
    reasoning: str = ""  # said first, as `reasoning_content`


Answer = str | ToolCall


class ChatUpstream(AppServer):
    def __init__(self, answer: Callable[[Any], Answer]) -> None:
        self.answer = answer
        self.bodies: list[Any] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.bodies.append(body)
        answer = self.answer(body)
        usage = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
        head = {"id": f"up-{len(self.bodies)}", "created": 1, "model": body["model"]}
        if isinstance(answer, ToolCall):
            call = {
                "id": answer.id,
                "type": "function",
                "function": {"name": answer.name, "arguments": answer.arguments},
            }
            message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [call]}
            if answer.reasoning:
                message["reasoning_content"] = answer.reasoning
            finish = "tool_calls"
        else:
            message, finish = {"role": "assistant", "content": answer}, "stop"
        if not body.get("stream"):
            choice = {"index": 0, "message": message, "finish_reason": finish}
            return web.json_response(
                {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
            )
        response = await open_stream(request)

        async def event(choices: list[Any], **extra: Any) -> None:
            data = {**head, "object": "chat.completion.chunk", "choices": choices, **extra}
            await send(response, data)

        if isinstance(answer, ToolCall):
            if answer.reasoning:
                thought = {"role": "assistant", "reasoning_content": answer.reasoning}
                await event([{"index": 0, "delta": thought}])
            opened = {**call, "index": 0, "function": {"name": answer.name, "arguments": ""}}
            await event([{"index": 0, "delta": {"role": "assistant", "tool_calls": [opened]}}])
            arguments = {"index": 0, "function": {"arguments": answer.arguments}}
            await event([{"index": 0, "delta": {"tool_calls": [arguments]}}])
        else:
            await event([{"index": 0, "delta": {"role": "assistant", "content": answer}}])
        await event([{"index": 0, "delta": {}, "finish_reason": finish}])
        if (body.get("stream_options") or {}).get("include_usage"):
            await event([], usage=usage)
        await response.write(DONE)
        return response
