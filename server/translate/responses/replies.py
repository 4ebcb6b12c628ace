"""Protos as OpenAI's Responses API answers: one `response` object, or its named events.

A response's `output` is its items in order: `reasoning` (its text as
`reasoning_text` content, and the text and its signature sealed as
`encrypted_content`: seal.py), `message` (one `output_text` part; an upstream's
refusal one `refusal` part, in a message of its own), then one
`function_call` per tool call (`id` `fc_…`, distinct from its `call_id`), or
`custom_tool_call` (`ctc_…`) for a custom tool's, a namespaced tool's under its
own name with `namespace` set (the request's `ToolNames`: tools.py). A
response cut by `max_output_tokens` is `incomplete`, its reason said. It echoes
the request's settings (`inbound.settings`).

The stream is named SSE events, each data's `type` its name and a rising
`sequence_number`: `response.created`, `response.in_progress`, then per item
`response.output_item.added`, its part's `content_part.added`, its deltas
(`output_text`, `refusal` or `reasoning_text`), their `.done`,
`content_part.done`, `output_item.done` (the whole item), and last
`response.completed` (or `response.incomplete`) with the whole response and its
usage; an item opened after the finish_reason (text an upstream sent late) is
closed before it. Text and reasoning go out as they come (a text item is one
preassembled event); tool calls are held until the answer finishes, as
items cannot interleave and an upstream's tool calls can; a custom tool call's
input is one `response.custom_tool_call_input.delta`, then its `.done`. A
failure after the first event is `response.failed` (`failed`).

With an `on_done` hook (a response to store), the last event waits for `finish`,
which the stream writer awaits once the chunks end: the hook has the whole
response (and each item's delta lengths, for a replay) before the event leaves,
and nothing is paid per chunk.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import orjson
from tandem.v1 import chat_pb2

from server.chunks import Chunk, Item
from server.errors import GatewayError
from server.translate.common import ToolCallPieces, named_event
from server.translate.protocols import JSON, ItemEncoder
from server.translate.responses.seal import Sealer
from server.translate.responses.tools import NO_TOOLS, Named, ToolNames, custom_input

__all__ = ["OnDone", "StreamEncoder", "encode_completion", "response_id"]

# what a stream's end awaits before its last event: the whole response, and the
# length of each delta sent, per output item (stored.replay sends them again so)
OnDone = Callable[[JSON, Sequence[Sequence[int]]], Awaitable[None]]


def _base(completion_id: str) -> str:
    """What the ids of a response and its items share: the completion's own id."""
    return completion_id.removeprefix("chatcmpl-")


def response_id(completion_id: str) -> str:
    return "resp_" + _base(completion_id)


def _usage(usage: chat_pb2.Usage) -> JSON:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.prompt_tokens_details.cached_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {
            "reasoning_tokens": usage.completion_tokens_details.reasoning_tokens
        },
        "total_tokens": usage.total_tokens or usage.prompt_tokens + usage.completion_tokens,
    }


def _incomplete(finish_reason: str) -> JSON | None:
    if finish_reason == "length":
        return {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return {"reason": "content_filter"}
    return None


def _response(
    rid: str, created: int, model: str, settings: JSON, status: str, output: list[JSON]
) -> JSON:
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "model": model,
        "output": output,
        **settings,
        "usage": None,
    }


def _reasoning(item_id: str, text: str) -> JSON:
    return {
        "id": item_id,
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
    }


def _sealed_reasoning(
    item_id: str, text: str, signature: str | None, sealer: Sealer | None
) -> JSON:
    """A finished reasoning item: its text, and the text and signature sealed."""
    item = _reasoning(item_id, text)
    if sealer is not None:
        item["encrypted_content"] = sealer.seal(text, signature or None)
    return item


def _text_part(text: str) -> JSON:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _refusal_part(text: str) -> JSON:
    return {"type": "refusal", "refusal": text}


def _message(item_id: str, content: list[JSON], status: str) -> JSON:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content,
    }


def _call(item_id: str, call_id: str, tool: Named, arguments: str, status: str) -> JSON:
    """A tool call's item: a `function_call` (its `arguments`), or a `custom_tool_call`
    (its `input`, from the arguments); a namespaced tool's with its `namespace`."""
    item: JSON = {"id": item_id, "type": "function_call", "call_id": call_id, "name": tool.name}
    if tool.kind == "custom":
        item["type"] = "custom_tool_call"
        item["input"] = custom_input(arguments) if arguments else ""
    else:
        item["arguments"] = arguments
    if tool.namespace is not None:
        item["namespace"] = tool.namespace
    item["status"] = status
    return item


def _call_item_id(base: str, n: int, tool: Named) -> str:
    """A call's item id (never its `call_id`)."""
    return f"{'ctc' if tool.kind == 'custom' else 'fc'}_{base}_{n}"


def encode_completion(
    completion: chat_pb2.ChatCompletion,
    settings: JSON,
    *,
    names: ToolNames = NO_TOOLS,
    sealer: Sealer | None = None,
) -> JSON:
    """The answer as a response object; `names` maps its tool calls back to the tools
    the request named, `sealer` seals its reasoning (none: not sealed)."""
    base = _base(completion.id)
    choice = completion.choices[0] if completion.choices else chat_pb2.Choice()
    message = choice.message
    incomplete = _incomplete(choice.finish_reason)
    output: list[JSON] = []
    if message.reasoning_content or message.reasoning_signature:
        output.append(
            _sealed_reasoning(
                f"rs_{base}", message.reasoning_content, message.reasoning_signature, sealer
            )
        )
    status = "incomplete" if incomplete else "completed"
    if message.content or not (message.tool_calls or message.refusal):  # a message, if empty
        output.append(_message(f"msg_{base}", [_text_part(message.content)], status))
    if message.refusal:  # in a message of its own, as streamed (Codex drops a message with one)
        refused = [_refusal_part(message.refusal)]
        output.append(_message(f"msg_{base}_{len(output)}", refused, status))
    for i, call in enumerate(message.tool_calls):
        tool = names.named(call.function.name)
        output.append(
            _call(
                _call_item_id(base, i, tool),
                call.id or f"call_{base}_{i}",
                tool,
                call.function.arguments,
                "completed",
            )
        )
    answer = _response(
        response_id(completion.id),
        completion.created,
        completion.model,
        settings,
        "incomplete" if incomplete else "completed",
        output,
    )
    answer["incomplete_details"] = incomplete
    answer["usage"] = _usage(completion.usage)
    return answer


class StreamEncoder:
    """Chunks in, the Responses API's events out; called with the first chunk first.
    `failed` writes the event that ends a stream that failed."""

    __slots__ = (
        "_base",
        "_created",
        "_delta_head",
        "_done",
        "_id",
        "_incomplete",
        "_item_id",
        "_kind",
        "_last",
        "_model",
        "_names",
        "_on_done",
        "_output",
        "_sealer",
        "_seq",
        "_settings",
        "_signature",
        "_splits",
        "_texts",
        "_tools",
    )

    def __init__(
        self,
        first: Chunk,
        settings: JSON,
        on_done: OnDone | None = None,
        *,
        names: ToolNames = NO_TOOLS,
        sealer: Sealer | None = None,
    ) -> None:
        self._on_done = on_done
        self._splits: list[list[int]] = []  # kept only for `on_done`
        self._last: tuple[str, JSON] | None = None  # the last event, held for `finish`
        self._base = _base(first.id)
        self._id = response_id(first.id)
        self._created = first.created
        self._model = first.model
        self._settings = settings
        self._names = names
        self._sealer = sealer
        self._signature = ""  # the open reasoning item's signature (Anthropic's)
        self._seq = -1
        self._output: list[JSON] = []  # the items done
        # the open item's: "message" (its part output_text), "refusal" (a message whose
        # part is a refusal), "reasoning" or "" (none)
        self._kind = ""
        self._item_id = ""
        self._texts: list[str] = []  # the open item's text, in pieces
        self._delta_head = b""  # the open item's delta event, up to its text
        self._tools: dict[int, ToolCallPieces] = {}
        self._incomplete: JSON | None = None
        self._done = False  # the items are finished (the answer's finish_reason came)

    def _emit(self, kind: str, data: JSON) -> bytes:
        self._seq += 1
        data["sequence_number"] = self._seq
        return named_event(kind, data)

    def _snapshot(self, status: str) -> JSON:
        return _response(
            self._id, self._created, self._model, self._settings, status, list(self._output)
        )

    def _open(self, kind: str) -> bytes:
        out = self._close()
        index = len(self._output)
        if kind in ("message", "refusal"):
            self._item_id = f"msg_{self._base}{f'_{index}' if index else ''}"
            item = _message(self._item_id, [], "in_progress")
            if kind == "message":
                part = _text_part("")
                delta = "response.output_text.delta"
                extra = b',"logprobs":[]'
            else:
                part = _refusal_part("")
                delta = "response.refusal.delta"
                extra = b""
        else:
            self._item_id = f"rs_{self._base}{f'_{index}' if index else ''}"
            item = {**_reasoning(self._item_id, ""), "content": []}
            part = {"type": "reasoning_text", "text": ""}
            delta = "response.reasoning_text.delta"
            extra = b""
        self._kind = kind
        self._texts = []
        self._signature = ""
        where = {"item_id": self._item_id, "output_index": index}
        out += self._emit(
            "response.output_item.added",
            {"type": "response.output_item.added", "output_index": index, "item": item},
        )
        out += self._emit(
            "response.content_part.added",
            {"type": "response.content_part.added", **where, "content_index": 0, "part": part},
        )
        head = orjson.dumps({"type": delta, **where, "content_index": 0})[:-1]
        self._delta_head = b"event: " + delta.encode() + b"\ndata: " + head + extra + b',"delta":'
        return out

    def _delta(self, text: str) -> bytes:
        self._texts.append(text)
        self._seq += 1
        return (
            self._delta_head
            + orjson.dumps(text)
            + b',"sequence_number":'
            + str(self._seq).encode()
            + b"}\n\n"
        )

    def _close(self) -> bytes:
        if not self._kind:
            return b""
        kind, self._kind = self._kind, ""
        text = "".join(self._texts)
        index = len(self._output)
        where = {"item_id": self._item_id, "output_index": index, "content_index": 0}
        status = "incomplete" if self._incomplete else "completed"
        if kind == "message":
            part: JSON = _text_part(text)
            item = _message(self._item_id, [part], status)
            out = self._emit(
                "response.output_text.done",
                {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
            )
        elif kind == "refusal":
            part = _refusal_part(text)
            item = _message(self._item_id, [part], status)
            out = self._emit(
                "response.refusal.done",
                {"type": "response.refusal.done", **where, "refusal": text},
            )
        else:
            item = _sealed_reasoning(self._item_id, text, self._signature, self._sealer)
            out = self._emit(
                "response.reasoning_text.done",
                {"type": "response.reasoning_text.done", **where, "text": text},
            )
            part = {"type": "reasoning_text", "text": text}
        out += self._emit(
            "response.content_part.done",
            {"type": "response.content_part.done", **where, "part": part},
        )
        self._output.append(item)
        if self._on_done is not None:
            self._splits.append([len(text) for text in self._texts])
        return out + self._emit(
            "response.output_item.done",
            {"type": "response.output_item.done", "output_index": index, "item": item},
        )

    def _finish(self, finish_reason: str) -> bytes:
        """Close what is open and send the tool calls held back, once."""
        if self._done:
            return b""
        self._done = True
        self._incomplete = _incomplete(finish_reason)
        if not self._tools and not self._output and self._kind in ("", "reasoning"):
            out = self._open("message")  # an answer says a message, if only an empty one
        else:
            out = b""
        out += self._close()
        for n, call in self._tools.items():
            index = len(self._output)
            tool = self._names.named(call.name)
            item_id = _call_item_id(self._base, n, tool)
            call_id = call.id or f"call_{self._base}_{n}"
            arguments = "".join(call.pieces)
            added = _call(item_id, call_id, tool, "", "in_progress")
            out += self._emit(
                "response.output_item.added",
                {"type": "response.output_item.added", "output_index": index, "item": added},
            )
            where = {"item_id": item_id, "output_index": index}
            item = _call(item_id, call_id, tool, arguments, "completed")
            if tool.kind == "custom":
                out += self._custom_input(where, item["input"])
            else:
                out += self._arguments(where, call.pieces, tool.name, arguments)
            self._output.append(item)
            if self._on_done is not None:
                self._splits.append(
                    [] if tool.kind == "custom" else [len(piece) for piece in call.pieces]
                )
            out += self._emit(
                "response.output_item.done",
                {"type": "response.output_item.done", "output_index": index, "item": item},
            )
        return out

    def _arguments(self, where: JSON, pieces: list[str], name: str, arguments: str) -> bytes:
        out = b""
        for piece in pieces:
            out += self._emit(
                "response.function_call_arguments.delta",
                {"type": "response.function_call_arguments.delta", **where, "delta": piece},
            )
        return out + self._emit(
            "response.function_call_arguments.done",
            {
                "type": "response.function_call_arguments.done",
                **where,
                "name": name,
                "arguments": arguments,
            },
        )

    def _custom_input(self, where: JSON, text: str) -> bytes:
        """A custom tool's input, decoded from its arguments once they are whole: one
        delta (none for an empty input), then its `.done`."""
        out = b""
        if text:
            out = self._emit(
                "response.custom_tool_call_input.delta",
                {"type": "response.custom_tool_call_input.delta", **where, "delta": text},
            )
        return out + self._emit(
            "response.custom_tool_call_input.done",
            {"type": "response.custom_tool_call_input.done", **where, "input": text},
        )

    def __call__(self, chunk: Item) -> bytes:
        if isinstance(chunk, str):  # never the first (server/chunks.py)
            if not chunk:
                return b""
            if self._kind == "message":
                return self._delta(chunk)
            return self._open("message") + self._delta(chunk)
        out = b""
        if self._seq < 0:
            created = self._snapshot("in_progress")
            out = self._emit("response.created", {"type": "response.created", "response": created})
            out += self._emit(
                "response.in_progress", {"type": "response.in_progress", "response": created}
            )
        for choice in chunk.choices:
            if choice.index:  # a response has one choice
                continue
            delta = choice.delta
            if delta.reasoning_content:
                if self._kind != "reasoning":
                    out += self._open("reasoning")
                out += self._delta(delta.reasoning_content)
            if delta.reasoning_signature:
                if self._kind != "reasoning":  # a signature alone: a reasoning item still
                    out += self._open("reasoning")
                self._signature = delta.reasoning_signature
            if delta.content:
                if self._kind != "message":
                    out += self._open("message")
                out += self._delta(delta.content)
            if delta.refusal:
                if self._kind != "refusal":
                    out += self._open("refusal")
                out += self._delta(delta.refusal)
            for piece in delta.tool_calls:
                ToolCallPieces.hold(self._tools, piece)
            if choice.finish_reason:
                out += self._finish(choice.finish_reason)
        if chunk.HasField("usage"):
            # what came after the finish_reason (text an upstream sent late) is closed
            # too: every item added is done, and in the response's output
            out += self._finish("stop") + self._close()
            status = "incomplete" if self._incomplete else "completed"
            answer = self._snapshot(status)
            answer["incomplete_details"] = self._incomplete
            answer["usage"] = _usage(chunk.usage)
            kind = f"response.{status}"
            if self._on_done is not None:
                self._last = (kind, answer)
            else:
                out += self._emit(kind, {"type": kind, "response": answer})
        return out

    encode = __call__

    async def finish(self) -> bytes:
        """The last event, once `on_done` has had the whole response (a stream that
        ended without its usage has none); what `on_done` raises fails the stream."""
        if self._last is None or self._on_done is None:
            return b""
        kind, answer = self._last
        await self._on_done(answer, self._splits)
        return self._emit(kind, {"type": kind, "response": answer})

    def failed(self, error: GatewayError) -> bytes:
        """The `response.failed` event that ends a stream failing after its first event."""
        answer = self._snapshot("failed")
        answer["error"] = {"code": error.code or "server_error", "message": error.message}
        return self._emit("response.failed", {"type": "response.failed", "response": answer})


_stream: Callable[..., ItemEncoder] = StreamEncoder
