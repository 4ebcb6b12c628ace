"""A fake OpenAI Responses API (`POST /v1/responses`): a real aiohttp server on
127.0.0.1:0, in its own thread, for `responses: native` providers.

Its answer, streamed as named SSE events or whole: a `reasoning` item sealed by
the upstream (`ENCRYPTED`), a hosted `web_search_call` item (`WEB_SEARCH`), then
a message saying `ANSWER`; `response.completed` carries `USAGE`. It follows a
script for the next requests (`ok` once the script is empty):

- `ok`: answer normally
- `500`: HTTP 500 before any byte of an answer
- `400`: HTTP 400, OpenAI's body, a message naming a secret URL, host and key
- `404`: HTTP 404, OpenAI's body: an unknown `previous_response_id`
- `cut`: stream up to the reasoning item, then drop the connection
- `failed`: stream up to the reasoning item, then the upstream's own `response.failed`
  (`failed:leak`: its message names `INTERNAL_HOST` and the key)
- `inject`: stream up to the reasoning item, then an event whose `type` holds a
  blank line and an event of its own (`INJECTED`)
- `big:M`: stream a message of one delta of M MiB, then 300 ms later
  `response.completed` (with `USAGE`), in a read of its own
- `nousage`: answer normally, `response.completed` without `usage`
- `slow:S`: wait S seconds before answering
- `drip`: stream the message a word every 100 ms, for 10 s
- `flood:M`: an answer of M MiB of text, in 8 KiB deltas (whole: one message)

A handler whose client goes away notes the time in `gone`.

Every request is recorded: its path, headers, raw body and JSON.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from tests.served import ScriptFollower
from tests.sse import open_stream, send

SECRET_URL = "http://10.9.8.7:4444/internal"
INTERNAL_HOST = "api.internal.corp"
UPSTREAM_KEY = "sk-responses-upstream-secret-0123456789"
UPSTREAM_MODEL = "gpt-up-2026-01-01"
RESPONSE_ID = "resp_upstream_0001"
INJECTED = "response.completed\n\nevent: response.injected"
ENCRYPTED = "gAAAAABupstream-sealed-reasoning-blob=="
ANSWER = "relayed words from the upstream"
REASONING: dict[str, Any] = {
    "id": "rs_up_1",
    "type": "reasoning",
    "summary": [{"type": "summary_text", "text": "thinking it over"}],
    "encrypted_content": ENCRYPTED,
}
WEB_SEARCH: dict[str, Any] = {
    "id": "ws_up_1",
    "type": "web_search_call",
    "status": "completed",
    "action": {"type": "search", "query": "tandem gateway"},
}
MESSAGE: dict[str, Any] = {
    "id": "msg_up_1",
    "type": "message",
    "role": "assistant",
    "status": "completed",
    "content": [{"type": "output_text", "text": ANSWER, "annotations": []}],
}
USAGE: dict[str, Any] = {
    "input_tokens": 41,
    "input_tokens_details": {"cached_tokens": 13},
    "output_tokens": 29,
    "output_tokens_details": {"reasoning_tokens": 17},
    "total_tokens": 70,
}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    raw: bytes
    body: Any


class FakeResponsesUpstream(ScriptFollower[Received]):
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/responses", self._respond)
        return app

    async def _respond(self, request: web.Request) -> web.StreamResponse:
        return await self._noting_hangup(self._answer(request))

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = orjson.loads(raw)
        headers = {name.lower(): value for name, value in request.headers.items()}
        self.requests.append(Received(request.path, headers, raw, body))
        kind, _, arg = self._next().partition(":")
        if kind == "slow":
            await asyncio.sleep(float(arg))
        if kind == "500":
            return _error(500, "the server had an error", "server_error", None)
        if kind == "400":
            message = (
                f"Unsupported value for temperature; see {SECRET_URL} (key {UPSTREAM_KEY}) "
                f"or ask {INTERNAL_HOST}"
            )
            return _error(400, message, "invalid_request_error", "temperature")
        if kind == "404":
            message = f"Previous response with id '{body.get('previous_response_id')}' not found."
            return _error(404, message, "invalid_request_error", "previous_response_id")
        usage = None if kind == "nousage" else USAGE
        flood = ["x" * 8191 + " "] * int(float(arg) * 128) if kind == "flood" else []
        if not body.get("stream"):
            text = {"type": "output_text", "text": "".join(flood), "annotations": []}
            output = [REASONING, WEB_SEARCH, {**MESSAGE, "content": [text]} if flood else MESSAGE]
            return web.json_response(_response(body, "completed", output, usage))
        answer = await open_stream(request)
        sequence = 0
        if kind == "big":
            return await _big(answer, body, int(float(arg) * 2**20))

        async def event(kind: str, **data: Any) -> None:
            nonlocal sequence
            await send(answer, {"type": kind, "sequence_number": sequence, **data}, kind)
            sequence += 1

        await event("response.created", response=_response(body, "in_progress", [], None))
        await event("response.in_progress", response=_response(body, "in_progress", [], None))
        reasoning_open = {**REASONING, "summary": []}
        await event("response.output_item.added", output_index=0, item=reasoning_open)
        await event("response.output_item.done", output_index=0, item=REASONING)
        if kind == "cut":
            assert request.transport is not None
            request.transport.close()
            return answer
        if kind == "inject":
            await send(answer, {"type": INJECTED, "sequence_number": sequence})
            return answer
        if kind == "failed":
            message = "the model failed"
            if arg == "leak":
                message += f" at {INTERNAL_HOST} ({UPSTREAM_KEY})"
            error = {"code": "server_error", "message": message}
            failed = {**_response(body, "failed", [REASONING], None), "error": error}
            await event("response.failed", response=failed)
            return answer
        searching = {**WEB_SEARCH, "status": "in_progress"}
        searching.pop("action")
        await event("response.output_item.added", output_index=1, item=searching)
        for step in ("in_progress", "searching", "completed"):
            await event(f"response.web_search_call.{step}", output_index=1, item_id="ws_up_1")
        await event("response.output_item.done", output_index=1, item=WEB_SEARCH)
        opened = {**MESSAGE, "status": "in_progress", "content": []}
        await event("response.output_item.added", output_index=2, item=opened)
        where = {"item_id": "msg_up_1", "output_index": 2, "content_index": 0}
        empty = {"type": "output_text", "text": "", "annotations": []}
        await event("response.content_part.added", **where, part=empty)
        words = [f"w{i}" for i in range(100)] if kind == "drip" else ANSWER.split(" ")
        words = flood or words
        for i, word in enumerate(words):
            if kind == "drip":
                await asyncio.sleep(0.1)
            delta = word if i == len(words) - 1 else word + " "
            await event("response.output_text.delta", **where, delta=delta, logprobs=[])
        await event("response.output_text.done", **where, text=ANSWER, logprobs=[])
        await event("response.content_part.done", **where, part=MESSAGE["content"][0])
        await event("response.output_item.done", output_index=2, item=MESSAGE)
        output = [REASONING, WEB_SEARCH, MESSAGE]
        await event("response.completed", response=_response(body, "completed", output, usage))
        return answer


async def _big(answer: web.StreamResponse, body: dict[str, Any], size: int) -> web.StreamResponse:
    where = {"item_id": "msg_up_1", "output_index": 0, "content_index": 0}
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": _response(body, "in_progress", [], None)}),
        ("response.output_text.delta", {**where, "delta": "x" * size, "logprobs": []}),
        ("response.completed", {"response": _response(body, "completed", [MESSAGE], USAGE)}),
    ]
    for sequence, (kind, data) in enumerate(events):
        if kind == "response.completed":
            await asyncio.sleep(0.3)
        await send(answer, {"type": kind, "sequence_number": sequence, **data}, kind)
    return answer


def _error(status: int, message: str, kind: str, param: str | None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return web.json_response(body, status=status)


def _response(
    body: dict[str, Any], status: str, output: list[Any], usage: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "id": RESPONSE_ID,
        "object": "response",
        "created_at": 1767225600,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "model": UPSTREAM_MODEL,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "store": body.get("store", True),
        "tools": body.get("tools", []),
        "usage": usage,
    }
