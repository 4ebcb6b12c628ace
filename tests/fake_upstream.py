"""A fake upstream speaking OpenAI's, Anthropic's and Ollama's APIs: a real aiohttp server on
127.0.0.1:0, in its own thread.

It echoes the last user message like the mock, and follows a script of
behaviours for the next requests (`ok` once the script is empty):

- `ok`: answer normally (streamed one word per event when asked to stream)
- `500`, `503`, `400`, `401`: that status, with an error body naming a secret URL and key
- `429:S`: 429 with `retry-after: S`
- `slow:S`: wait S seconds before answering (embeddings too)
- `drop`: stream two events, then drop the connection
- `drip`: stream a word every 100 ms for 10 s
- `flood:M`: answer M MiB, in 8 KiB words, as fast as the reader takes them
- `badjson`: 200 with a body that is not JSON
- `tools`: answer with two tool calls (streamed in pieces when streaming; Ollama's
  whole, in one line, without ids as before Ollama 0.12.10)
- `toolids` (Ollama): `tools`, each call with its own `id` (`OLLAMA_CALL_IDS`), as
  Ollama 0.12.10 on sends them
- `errorevent`, `errormid`: a `{"error": ...}` event first, or after two words
- `errorbody`: 200 with `{"error": ...}` as the body
- `badlogprobs`: logprobs whose numbers are strings
- `nousage`: answer normally, but never say the usage; `tools:nousage` likewise
- `cached`: answer normally; OpenAI's usage says 3 cached prompt tokens and 1
  reasoning token (Anthropic's answers always say 2 cache reads)
- `pairs`: stream two choices in every event, and no usage
- `stopseq`: answer normally, but say the stop sequence `END` ended it (Anthropic's
  `stop_reason: stop_sequence` and `stop_sequence`, vLLM's `stop_reason` on the
  choice) and that 5 prompt tokens were written to the cache (Anthropic's
  `cache_creation_input_tokens`, OpenRouter's `prompt_tokens_details.cache_write_tokens`)
- `cachewrite` (Anthropic): answer normally, with `stopseq`'s 5 cache writes
- `reasoning`: think first: `REASONING` as OpenAI-compatible `reasoning_content`
  (in two pieces when streaming), Ollama's `message.thinking`, or an Anthropic
  `thinking` block signed `SIGNATURE` (`thinking_delta`s then a
  `signature_delta` when streaming), then answer normally

Ollama's `/api/show` says a model's capabilities (`SHOWN`), or follows `500` (any
status), `slow:S`, `flood:M`, `badjson`, or `nocapabilities` (an Ollama before 0.6.4).

Every request is recorded (path, headers, JSON body, arrival time); a
handler whose client goes away records the time in `gone`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from tests.served import ScriptFollower
from tests.sse import DONE, open_stream, send

SECRET_URL = "http://10.9.8.7:4444/internal"
UPSTREAM_KEY = "sk-upstream-secret-0123456789"
REASONING = "let me think"
SIGNATURE = "sig-abc123"
THOUGHTS = ("let me ", "think")  # REASONING in the pieces a stream sends
STOP_SEQUENCE = "END"  # the stop sequence `stopseq` answers say ended them
# the tool call ids an Ollama 0.12.10 or later sends (`call_` and 8 of [a-z0-9])
OLLAMA_CALL_IDS = ("call_k3x9q2mz", "call_0a7bd4e1")
# what Ollama's `/api/show` says these models can do (any other: `completion`)
SHOWN = {
    "nomic-embed-text": ["embedding"],
    "qwen3:8b": ["completion", "tools", "thinking"],
}


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any
    at: float


class FakeUpstream(ScriptFollower[Recorded]):
    def filled(self, config: str) -> str:
        """`config` with this upstream's addresses: `%(url)s` its OpenAI base URL (.../v1),
        `%(root)s` its root (Anthropic's and Ollama's), `%(key)s` the key it expects."""
        return config % {"url": self.base_url, "root": self.root, "key": UPSTREAM_KEY}

    # --- server ---------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/api/chat", self._ollama_chat)
        app.router.add_post("/api/embed", self._ollama_embed)
        app.router.add_post("/api/show", self._ollama_show)
        return app

    # --- handlers -------------------------------------------------------------------

    async def _record(self, request: web.Request) -> Any:
        body = orjson.loads(await request.read())
        self.requests.append(Recorded(request.path, dict(request.headers), body, time.monotonic()))
        return body

    async def _called(self, request: web.Request) -> tuple[Any, str]:
        """The call's body, recorded, and what the script says it meets."""
        return await self._record(request), self._next()

    def _error(self, status: int, headers: dict[str, str] | None = None) -> web.Response:
        message = f"failed, see {SECRET_URL} (key {UPSTREAM_KEY})"
        body = {"error": {"message": message, "type": "server_error", "param": "temperature"}}
        return web.json_response(body, status=status, headers=headers)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, behaviour = await self._called(request)
        return await self._noting_hangup(self._answer(request, body, behaviour))

    async def _answer(self, request: web.Request, body: Any, behaviour: str) -> web.StreamResponse:
        kind, _, arg = behaviour.partition(":")
        if kind.isdigit():
            headers = {"retry-after": arg} if arg else None
            return self._error(int(kind), headers)
        if kind == "slow":
            await asyncio.sleep(float(arg))
        if kind == "badjson":
            return web.Response(body=b"{not json", content_type="application/json")
        failure = {"error": {"message": f"overloaded, see {SECRET_URL}", "type": "server_error"}}
        if kind == "errorbody":
            return web.json_response(failure)
        text = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
        if isinstance(text, list):  # text parts
            text = " ".join(part.get("text", "") for part in text)
        words = [w + " " for w in text.split()]
        if words:
            words[-1] = words[-1][:-1]
        if kind == "flood":
            words = ["x" * 8191 + " "] * int(float(arg) * 128)
        usage: dict[str, Any] | None = {
            "prompt_tokens": 7,
            "completion_tokens": len(words),
            "total_tokens": 7 + len(words),
        }
        if kind in ("nousage", "pairs") or arg == "nousage":
            usage = None
        elif kind == "cached" and usage is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": 3}
            usage["completion_tokens_details"] = {"reasoning_tokens": 1}
        elif kind == "stopseq" and usage is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": 0, "cache_write_tokens": 5}
        stop_reason = {"stop_reason": STOP_SEQUENCE} if kind == "stopseq" else {}
        head = {"id": "up-1", "created": 1, "model": body["model"], "system_fingerprint": "fp_up"}
        tool_calls: list[dict[str, Any]] = [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {
                "id": "call_b",
                "type": "function",
                "function": {"name": "get_time", "arguments": "{}"},
            },
        ]
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": "".join(words)}
            finish = "stop"
            if kind == "tools":
                message = {"role": "assistant", "content": None, "tool_calls": tool_calls}
                finish = "tool_calls"
            if kind == "reasoning":
                message["reasoning_content"] = REASONING
            logprobs = {"content": [{"token": "x", "logprob": "-0.1", "bytes": [120]}]}
            choice = {
                "index": 0,
                "message": message,
                "finish_reason": finish,
                "logprobs": logprobs if kind == "badlogprobs" else None,
                **stop_reason,
            }
            answer = {**head, "object": "chat.completion", "choices": [choice]}
            return web.json_response(answer if usage is None else {**answer, "usage": usage})

        response = await open_stream(request)

        async def event(choices: list[Any], **extra: Any) -> None:
            data = {**head, "object": "chat.completion.chunk", "choices": choices, **extra}
            await send(response, data)

        if kind == "tools":
            await event([{"index": 0, "delta": {"role": "assistant", "content": None}}])
            for i, call in enumerate(tool_calls):
                first = {
                    "index": i,
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": ""},
                }
                await event([{"index": 0, "delta": {"tool_calls": [first]}}])
                arguments = call["function"]["arguments"]
                for piece in (arguments[: len(arguments) // 2], arguments[len(arguments) // 2 :]):
                    await event(
                        [
                            {
                                "index": 0,
                                "delta": {
                                    "tool_calls": [{"index": i, "function": {"arguments": piece}}]
                                },
                            }
                        ]
                    )
            await event([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}])
        else:
            if kind == "drip":
                words = [f"w{i} " for i in range(100)]
            if kind == "errorevent":
                await send(response, failure)
                return response
            if kind == "reasoning":
                for thought in THOUGHTS:
                    await event([{"index": 0, "delta": {"reasoning_content": thought}}])
            for i, word in enumerate(words):
                if kind == "errormid" and i == 2:
                    await send(response, failure)
                    return response
                if kind == "drip":
                    await asyncio.sleep(0.1)
                if kind == "drop" and i == 2:
                    assert request.transport is not None
                    request.transport.close()
                    return response
                delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
                indexes = (0, 1) if kind == "pairs" else (0,)
                await event([{"index": n, "delta": delta, "finish_reason": None} for n in indexes])
            await event([{"index": 0, "delta": {}, "finish_reason": "stop", **stop_reason}])
        if (body.get("stream_options") or {}).get("include_usage") and usage is not None:
            await event([], usage=usage)
        await response.write(DONE)
        return response

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body, behaviour = await self._called(request)
        if behaviour[0].isdigit():
            return self._error(int(behaviour))
        if behaviour.startswith("slow:"):
            await asyncio.sleep(float(behaviour.partition(":")[2]))
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(text)), 0.5, -0.25]}
            for i, text in enumerate(body["input"])
        ]
        answer = {"object": "list", "data": data, "model": body["model"]}
        if behaviour != "nousage":
            answer["usage"] = {"prompt_tokens": 3, "total_tokens": 3}
        return web.json_response(answer)

    # --- Anthropic's Messages API -----------------------------------------------------

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body, behaviour = await self._called(request)
        kind, _, arg = behaviour.partition(":")
        if kind.isdigit():
            return self._error(int(kind), {"retry-after": arg} if arg else None)
        turns = [t for t in body["messages"] if t["role"] == "user"]
        blocks = turns[-1]["content"] if turns else []
        text = (
            blocks
            if isinstance(blocks, str)
            else " ".join(b.get("text", "") for b in blocks if b.get("type") == "text")
        )
        words = [w + " " for w in text.split()]
        if words:
            words[-1] = words[-1][:-1]
        stop_reason = "end_turn"
        if len(words) > body["max_tokens"]:
            words, stop_reason = words[: body["max_tokens"]], "max_tokens"
        usage_in = {"input_tokens": 11, "cache_read_input_tokens": 2, "output_tokens": 1}
        stop_sequence = None
        if kind == "stopseq":
            stop_reason, stop_sequence = "stop_sequence", STOP_SEQUENCE
        if kind in ("stopseq", "cachewrite"):
            usage_in["cache_creation_input_tokens"] = 5
        tool = {
            "type": "tool_use",
            "id": "toolu_1",
            "name": "get_weather",
            "input": {"city": "Paris"},
        }
        if kind == "tools":
            stop_reason = "tool_use"
        if not body.get("stream"):
            content: list[Any] = [{"type": "text", "text": "".join(words)}]
            if kind == "tools":
                content = [{"type": "text", "text": "Let me check."}, tool]
            if kind == "reasoning":
                thinking = {"type": "thinking", "thinking": REASONING, "signature": SIGNATURE}
                content = [thinking, *content]
            return web.json_response(
                {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": body["model"],
                    "content": content,
                    "stop_reason": stop_reason,
                    "stop_sequence": stop_sequence,
                    "usage": {**usage_in, "output_tokens": len(words)},
                }
            )
        response = await open_stream(request)

        async def event(name: str, data: dict[str, Any]) -> None:
            await send(response, {"type": name, **data}, name)

        message = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [],
            "stop_reason": None,
            "usage": usage_in,
        }
        await event("message_start", {"message": message})
        await event("ping", {})
        if kind == "tools":
            await event(
                "content_block_start",
                {
                    "index": 0,
                    "content_block": {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {},
                    },
                },
            )
            for piece in ('{"city": ', '"Paris"}'):
                await event(
                    "content_block_delta",
                    {"index": 0, "delta": {"type": "input_json_delta", "partial_json": piece}},
                )
            await event("content_block_stop", {"index": 0})
        else:
            block = 0
            if kind == "reasoning":
                start = {"type": "thinking", "thinking": ""}
                await event("content_block_start", {"index": 0, "content_block": start})
                for thought in THOUGHTS:
                    thinking = {"type": "thinking_delta", "thinking": thought}
                    await event("content_block_delta", {"index": 0, "delta": thinking})
                signed = {"type": "signature_delta", "signature": SIGNATURE}
                await event("content_block_delta", {"index": 0, "delta": signed})
                await event("content_block_stop", {"index": 0})
                block = 1
            await event(
                "content_block_start",
                {"index": block, "content_block": {"type": "text", "text": ""}},
            )
            for i, word in enumerate(words):
                if kind == "overloaded" and i == 1:
                    await event(
                        "error", {"error": {"type": "overloaded_error", "message": "Overloaded"}}
                    )
                    return response
                await event(
                    "content_block_delta",
                    {"index": block, "delta": {"type": "text_delta", "text": word}},
                )
            await event("content_block_stop", {"index": block})
        await event(
            "message_delta",
            {
                "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                "usage": {"output_tokens": len(words)},
            },
        )
        await event("message_stop", {})
        return response

    # --- Ollama's /api/chat and /api/embed ------------------------------------------

    async def _ollama_chat(self, request: web.Request) -> web.StreamResponse:
        body, behaviour = await self._called(request)
        if behaviour[0].isdigit():
            return web.json_response({"error": f"boom at {SECRET_URL}"}, status=int(behaviour))
        text = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
        words = [w + " " for w in text.split()]
        if words:
            words[-1] = words[-1][:-1]
        limit = (body.get("options") or {}).get("num_predict")
        reason = "stop"
        if limit is not None and len(words) > limit:
            words, reason = words[:limit], "length"
        final: dict[str, Any] = {
            "model": body["model"],
            "done": True,
            "done_reason": reason,
            "prompt_eval_count": 5,
            "eval_count": len(words),
        }
        tool_calls: list[dict[str, Any]] = [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"function": {"name": "get_time", "arguments": {}}},
        ]
        if behaviour == "toolids":
            tool_calls = [{"id": i, **c} for i, c in zip(OLLAMA_CALL_IDS, tool_calls, strict=True)]
            behaviour = "tools"
        if not body.get("stream", True):
            message: dict[str, Any] = {"role": "assistant", "content": "".join(words)}
            if behaviour == "tools":
                message = {"role": "assistant", "content": "", "tool_calls": tool_calls}
            if behaviour == "reasoning":
                message["thinking"] = REASONING
            return web.json_response({**final, "message": message})
        response = web.StreamResponse(headers={"content-type": "application/x-ndjson"})
        await response.prepare(request)

        async def line(content: str = "", **more: Any) -> None:
            message = {"role": "assistant", "content": content, **more}
            await response.write(
                orjson.dumps({"model": body["model"], "done": False, "message": message}) + b"\n"
            )

        if behaviour == "tools":
            words = []
            await line(tool_calls=tool_calls)
        if behaviour == "reasoning":
            for thought in THOUGHTS:
                await line(thinking=thought)
        for word in words:
            await line(word)
        await response.write(
            orjson.dumps({**final, "message": {"role": "assistant", "content": ""}}) + b"\n"
        )
        return response

    async def _ollama_show(self, request: web.Request) -> web.StreamResponse:
        body, behaviour = await self._called(request)
        if behaviour[0].isdigit():
            return web.json_response({"error": f"boom at {SECRET_URL}"}, status=int(behaviour))
        if behaviour.startswith("slow:"):
            await asyncio.sleep(float(behaviour.partition(":")[2]))
        if behaviour.startswith("flood:"):  # a `license` of M MiB
            return web.json_response({"license": "x" * (int(behaviour[6:]) << 20)})
        if behaviour == "badjson":
            return web.Response(text="not json", content_type="application/json")
        answer = {"details": {"family": "llama"}, "model_info": {}, "modified_at": "2025-01-01"}
        if behaviour != "nocapabilities":  # as Ollama before 0.6.4
            answer["capabilities"] = SHOWN.get(body["model"], ["completion"])
        return web.json_response(answer)

    async def _ollama_embed(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        vectors = [[float(len(text)), 1.0] for text in body["input"]]
        return web.json_response(
            {"model": body["model"], "embeddings": vectors, "prompt_eval_count": 4}
        )
