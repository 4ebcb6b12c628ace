"""Ollama's dialect (`/api/chat`, `/api/embed`): chat requests out, NDJSON answers in.

Sampling fields go under `options` (`max_tokens` is `num_predict`, `top_k`
is `top_k`); images travel as base64 next to the message; tool call arguments
are JSON objects, not strings; tool call ids travel both ways as Ollama 0.12.10
on spells them (`id`, a result's `tool_call_id`). Reasoning is Ollama's
`thinking`, both ways, and `reasoning_effort` (lowered to fit
`reasoning_budget_tokens`: Ollama takes no budget) is its `think` (see
`THINK`). A field Ollama cannot honour is refused by name (400).
"""

from __future__ import annotations

from typing import Any

import orjson
from tandem.v1 import chat_pb2, embeddings_pb2

from server.chunks import Item
from server.context import new_id
from server.translate.common import (
    DATA_URL,
    cannot_honour,
    response_schema,
    tool_arguments,
    tool_parameters,
)
from server.translate.ollama import SAMPLING_OPTIONS
from server.translate.reasoning import reasoning_effort

__all__ = [
    "StreamTranslator",
    "capabilities_from_show",
    "chat_request_to_ollama",
    "embed_request_to_ollama",
    "embeddings_from_ollama",
]

JSON = dict[str, Any]
# reasoning_effort -> `think`. gpt-oss takes the levels "low", "medium" and
# "high"; other thinking models (Qwen 3, DeepSeek R1) take a boolean and read
# any level as true. "minimal" becomes "low", the least thinking Ollama has
# (`true` would be gpt-oss's "medium").
THINK = {"minimal": "low", "low": "low", "medium": "medium", "high": "high"}


def _check_supported(request: chat_pb2.ChatCompletionRequest) -> None:
    if request.HasField("n") and request.n != 1:
        raise cannot_honour("n", "only n = 1 is possible")
    if request.logit_bias:
        raise cannot_honour("logit_bias", "cannot be honoured")
    for name in ("logprobs", "top_logprobs"):
        if request.HasField(name):
            raise cannot_honour(name, "cannot be honoured")
    if request.HasField("tool_choice") and request.tool_choice.mode not in ("auto", "none"):
        raise cannot_honour("tool_choice", "only 'auto' and 'none' are possible")


def _message(message: chat_pb2.ChatMessage, where: str) -> JSON:
    out: JSON = {"role": message.role if message.role != "developer" else "system"}
    if message.HasField("content"):
        out["content"] = message.content
    else:
        texts, images = [], []
        for j, part in enumerate(message.parts):
            kind = part.WhichOneof("part")
            if kind in ("text", "refusal"):
                texts.append(getattr(part, kind))
            elif kind == "image_url" and (match := DATA_URL.fullmatch(part.image_url.url)):
                images.append(match["data"])
            else:
                raise cannot_honour(
                    f"{where}.content[{j}]", "only text and base64 images can be sent"
                )
        out["content"] = "\n".join(texts)
        if images:
            out["images"] = images
    if message.tool_calls:
        calls = []
        for k, call in enumerate(message.tool_calls):
            arguments = tool_arguments(call, f"{where}.tool_calls[{k}]")
            sent: JSON = {"id": call.id} if call.id else {}  # Ollama's `id` (0.12.10 on)
            sent["function"] = {"name": call.function.name, "arguments": arguments}
            calls.append(sent)
        out["tool_calls"] = calls
    if message.role == "tool":
        if message.tool_call_id:  # the call answered; an older Ollama ignores it
            out["tool_call_id"] = message.tool_call_id
        if message.name:
            out["tool_name"] = message.name
    if message.HasField("reasoning_content"):
        out["thinking"] = message.reasoning_content
    return out


def chat_request_to_ollama(
    request: chat_pb2.ChatCompletionRequest, model: str, *, stream: bool
) -> JSON:
    _check_supported(request)
    body: JSON = {
        "model": model,
        "messages": [_message(m, f"messages[{i}]") for i, m in enumerate(request.messages)],
        "stream": stream,
    }
    options: JSON = {
        option: getattr(request, option)
        for option in SAMPLING_OPTIONS
        if request.HasField(option)  # type: ignore[arg-type]
    }
    if request.HasField("max_completion_tokens"):
        options["num_predict"] = request.max_completion_tokens
    elif request.HasField("max_tokens"):
        options["num_predict"] = request.max_tokens
    if request.stop:
        options["stop"] = list(request.stop)
    if options:
        body["options"] = options
    if (effort := reasoning_effort(request)) is not None:
        body["think"] = THINK[effort]  # validated at the door
    if request.tools and request.tool_choice.mode != "none":
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.function.name,
                    "description": t.function.description,
                    "parameters": tool_parameters(t.function) or {},
                },
            }
            for t in request.tools
        ]
    if request.HasField("response_format"):
        response_format = request.response_format
        if response_format.type == "json_object":
            body["format"] = "json"
        elif response_format.type == "json_schema":
            body["format"] = response_schema(response_format.json_schema) or {}
    return body


_TEXT_ONLY = frozenset(("role", "content"))


class StreamTranslator:
    """Ollama's answer lines (or its one answer) as chunks; a tool call Ollama sent
    without an id gets one here."""

    __slots__ = ("_started", "_tools")

    def __init__(self) -> None:
        self._started = False
        self._tools = 0

    def feed(self, line: JSON) -> Item:
        """A line as a chunk, or as its bare text (server/chunks.py) when, after the
        first, it carries nothing but content."""
        message = line.get("message")
        if self._started and not line.get("done") and type(message) is dict:
            content = message.get("content")
            if content and type(content) is str and message.keys() <= _TEXT_ONLY:
                return content
        chunk = chat_pb2.ChatCompletionChunk()
        choice = chunk.choices.add(index=0)
        delta = choice.delta
        if not self._started:
            delta.role = "assistant"
            self._started = True
        message = line.get("message") or {}
        if message.get("content"):
            delta.content = message["content"]
        if message.get("thinking"):
            delta.reasoning_content = message["thinking"]
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            # the upstream's id (Ollama 0.12.10 on), else the gateway's own: distinct
            # across calls and turns, in OpenAI's shape
            given = call.get("id")
            call_id = given if given and type(given) is str else f"call_{new_id()[:24]}"
            piece = delta.tool_calls.add(index=self._tools, id=call_id, type="function")
            piece.function.name = function.get("name", "")
            piece.function.arguments = orjson.dumps(function.get("arguments") or {}).decode()
            self._tools += 1
        if line.get("done"):
            if self._tools:
                choice.finish_reason = "tool_calls"
            else:
                choice.finish_reason = "length" if line.get("done_reason") == "length" else "stop"
            prompt, completion = line.get("prompt_eval_count"), line.get("eval_count")
            if isinstance(prompt, int) and isinstance(completion, int):  # else estimated
                chunk.usage.prompt_tokens = prompt
                chunk.usage.completion_tokens = completion
                chunk.usage.total_tokens = prompt + completion
        elif not (
            delta.HasField("content")
            or delta.tool_calls
            or delta.HasField("role")
            or delta.HasField("reasoning_content")
        ):
            delta.content = ""
        return chunk


def embed_request_to_ollama(request: embeddings_pb2.EmbeddingRequest, model: str) -> JSON:
    body: JSON = {"model": model, "input": list(request.input)}
    if request.HasField("dimensions"):
        body["dimensions"] = request.dimensions
    return body


def embeddings_from_ollama(data: JSON) -> embeddings_pb2.EmbeddingResponse:
    response = embeddings_pb2.EmbeddingResponse()
    for index, vector in enumerate(data["embeddings"]):
        response.data.add(index=index, embedding=vector)
    tokens = data.get("prompt_eval_count")
    if isinstance(tokens, int):  # else the core estimates it
        response.usage.prompt_tokens = response.usage.total_tokens = tokens
    return response


# bounds on what an upstream's `/api/show` may say a model can do, as it is passed on
_MAX_CAPABILITIES = 32
_MAX_CAPABILITY_CHARS = 64


def capabilities_from_show(data: JSON) -> tuple[str, ...] | None:
    """The `capabilities` of an Ollama server's `/api/show` answer, None if it names
    none (Ollama before 0.6.4) or names them beyond the bounds."""
    found = data.get("capabilities")
    if (
        isinstance(found, list)
        and 0 < len(found) <= _MAX_CAPABILITIES
        and all(isinstance(c, str) and 0 < len(c) <= _MAX_CAPABILITY_CHARS for c in found)
    ):
        return tuple(found)
    return None
