"""An OpenAI-compatible upstream: the request it is sent, and its answers as protos.

Beyond OpenAI's own shapes, answers may say what OpenAI does not: reasoning
(DeepSeek's `reasoning_content`, vLLM's `reasoning`), the stop sequence that
ended a choice (vLLM's `stop_reason`, a string), and cache writes
(OpenRouter's `prompt_tokens_details.cache_write_tokens`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from tandem.v1 import chat_pb2, embeddings_pb2

from server.chunks import Item
from server.errors import UpstreamError
from server.translate.common import cannot_honour, response_schema, tool_parameters
from server.translate.extra import REASONING_SENT_BACK, ExtraFields, merge_extra
from server.translate.openai.replies import encode_tool_calls
from server.translate.protojson import parse_into
from server.translate.reasoning import reasoning_effort

__all__ = [
    "chat_request_to_openai",
    "chunk_from_openai",
    "completion_as_chunk",
    "embedding_request_to_openai",
    "embeddings_from_openai",
    "message_to_openai",
    "stream_decoder",
    "whole_chunk_from_openai",
]

JSON = dict[str, Any]


_SCALAR_FIELDS = frozenset(
    {
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logprobs",
        "top_logprobs",
        "parallel_tool_calls",
        "user",
    }
)


def _part_to_openai(part: chat_pb2.ContentPart) -> JSON:
    kind = part.WhichOneof("part")
    if kind == "image_url":
        image: JSON = {"url": part.image_url.url}
        if part.image_url.detail:
            image["detail"] = part.image_url.detail
        return {"type": "image_url", "image_url": image}
    if kind == "input_audio":
        audio = {"data": part.input_audio.data, "format": part.input_audio.format}
        return {"type": "input_audio", "input_audio": audio}
    if kind == "refusal":
        return {"type": "refusal", "refusal": part.refusal}
    return {"type": "text", "text": part.text}


def message_to_openai(message: chat_pb2.ChatMessage) -> JSON:
    out: JSON = {"role": message.role}
    if message.HasField("content"):
        out["content"] = message.content
    elif message.parts:
        out["content"] = [_part_to_openai(p) for p in message.parts]
    else:
        out["content"] = None if message.tool_calls else ""
    if message.name:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = encode_tool_calls(message.tool_calls, with_index=False)
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    if message.HasField("refusal"):
        out["refusal"] = message.refusal
    return out


def _text_only(message: chat_pb2.ChatMessage) -> str | None:
    """A message of text parts only, as one text (parts on lines of their own)."""
    if message.HasField("content") or not message.parts:
        return None
    texts = []
    for part in message.parts:
        if part.WhichOneof("part") != "text":
            return None
        texts.append(part.text)
    return "\n".join(texts)


def _messages_to_openai(
    messages: Iterable[chat_pb2.ChatMessage], *, send_reasoning: bool, join_texts: bool
) -> tuple[list[JSON], bool]:
    """(the messages, whether a `reasoning_content` was held back). It is sent back only
    where the provider says so: DeepSeek documents a 400 for input messages that carry
    it, and OpenAI and vLLM define no such input field. With `join_texts`, a message of
    text parts only is one string."""
    out = []
    held = False
    for message in messages:
        item = message_to_openai(message)
        if join_texts and (text := _text_only(message)) is not None:
            item["content"] = text
        if message.HasField("reasoning_content"):
            if send_reasoning:
                item["reasoning_content"] = message.reasoning_content
            else:
                held = True
        out.append(item)
    return out, held


def _tool_to_openai(tool: chat_pb2.Tool) -> JSON:
    function: JSON = {"name": tool.function.name}
    if tool.function.description:
        function["description"] = tool.function.description
    if (parameters := tool_parameters(tool.function)) is not None:
        function["parameters"] = parameters
    if tool.function.HasField("strict"):
        function["strict"] = tool.function.strict
    return {"type": tool.type or "function", "function": function}


def _response_format_to_openai(response_format: chat_pb2.ResponseFormat) -> JSON:
    out: JSON = {"type": response_format.type}
    if response_format.type == "json_schema":
        schema = response_format.json_schema
        inner: JSON = {"name": schema.name}
        if schema.description:
            inner["description"] = schema.description
        if (value := response_schema(schema)) is not None:
            inner["schema"] = value
        if schema.HasField("strict"):
            inner["strict"] = schema.strict
        out["json_schema"] = inner
    return out


def chat_request_to_openai(
    request: chat_pb2.ChatCompletionRequest,
    model: str,
    *,
    stream: bool,
    extra_fields: ExtraFields = "allow",
    send_reasoning: bool = False,
    join_texts: bool = False,
    left_out: list[str] | None = None,
) -> JSON:
    """The request for an OpenAI-compatible upstream: every field set passes through.

    `reasoning_effort` is OpenAI's own (lowered to fit `reasoning_budget_tokens`,
    which OpenAI lacks); `top_k` is not an OpenAI parameter and
    is refused by name, before any upstream call. A stream always asks for
    `include_usage`, so that usage is known; whether the caller sees it is the
    door's decision. The request's `extra_body` follows, as far as `extra_fields`
    lets it, never over what the gateway set; messages' `reasoning_content` only
    with `send_reasoning`. What is held back is added to `left_out`. `join_texts`
    sends a message of text parts only as one string: Anthropic's text blocks (kept
    apart for its prompt cache) are strings to OpenAI-compatible servers, some of which
    (Groq) refuse parts in a system message.
    """
    if request.HasField("top_k"):
        raise cannot_honour("top_k", "is not an OpenAI parameter")
    body: JSON = {"model": model}
    for field, value in request.ListFields():
        name = field.name
        if name in _SCALAR_FIELDS:
            body[name] = value
        elif name == "messages":
            body[name], reasoning_held = _messages_to_openai(
                value, send_reasoning=send_reasoning, join_texts=join_texts
            )
            if reasoning_held and left_out is not None:
                left_out.append(REASONING_SENT_BACK)
        elif name == "stop":
            body[name] = list(value)
        elif name == "logit_bias":
            body[name] = dict(value)
        elif name == "tools":
            body[name] = [_tool_to_openai(t) for t in value]
        elif name == "tool_choice":
            body[name] = value.mode or {
                "type": "function",
                "function": {"name": value.function.name},
            }
        elif name == "response_format":
            body[name] = _response_format_to_openai(value)
    if (effort := reasoning_effort(request)) is not None:
        body["reasoning_effort"] = effort
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    merge_extra(body, request, extra_fields, left_out)
    return body


def _fill_tool_calls(target: Any, calls: Any, *, indexed: bool) -> None:
    for position, call in enumerate(calls or ()):
        item = target.add(index=call.get("index", position) if indexed else position)
        if call.get("id"):
            item.id = call["id"]
        if call.get("type"):
            item.type = call["type"]
        function = call.get("function") or {}
        if function.get("name"):
            item.function.name = function["name"]
        if function.get("arguments"):
            item.function.arguments = function["arguments"]


def _fill_usage(chunk: chat_pb2.ChatCompletionChunk, usage: Any) -> None:
    """The upstream's counts, only when it sent both (else the core estimates them)."""
    if not isinstance(usage, dict):
        return
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if isinstance(prompt, int) and isinstance(completion, int):
        target = chunk.usage
        target.prompt_tokens = prompt
        target.completion_tokens = completion
        target.total_tokens = prompt + completion
        cached = _detail(usage, "prompt_tokens_details", "cached_tokens")
        if cached:
            target.prompt_tokens_details.cached_tokens = cached
        written = _detail(usage, "prompt_tokens_details", "cache_write_tokens")
        if written:
            target.prompt_tokens_details.cache_write_tokens = written
        reasoning = _detail(usage, "completion_tokens_details", "reasoning_tokens")
        if reasoning:
            target.completion_tokens_details.reasoning_tokens = reasoning


def _detail(usage: JSON, details: str, name: str) -> int:
    """One count of OpenAI's `*_tokens_details`, 0 when absent or not a count."""
    found = usage.get(details)
    value = found.get(name) if isinstance(found, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _stop_sequence(choice: chat_pb2.ChunkChoice, item: JSON) -> None:
    """vLLM's `stop_reason`: the stop string that ended a choice (a token id, or null at
    the end of sequence, names none)."""
    matched = item.get("stop_reason")
    if type(matched) is str and choice.finish_reason == "stop":
        choice.stop_sequence = matched


def _reasoning(source: JSON) -> Any:
    """DeepSeek's (and older vLLM's) `reasoning_content`, else newer vLLM's `reasoning`."""
    reasoning = source.get("reasoning_content")
    return source.get("reasoning") if reasoning is None else reasoning


def _raise_upstream_error(data: JSON) -> None:
    """An OpenAI-compatible server may report a failure inside a 200: as an event or a body."""
    if data.get("error") is not None:
        error = data["error"]
        kind = error.get("type") if isinstance(error, dict) else None
        retryable = kind in ("server_error", "overloaded_error", "rate_limit_error", None)
        raise UpstreamError(f"upstream provider failed: {kind or 'error'}", retryable=retryable)


def _plain_text(data: JSON) -> str | None:
    """The content of an event that carries nothing else (most of a stream), or None.
    Its `system_fingerprint`, if any, is taken to be the stream's (the first event's)."""
    choices = data.get("choices")
    if type(choices) is not list or len(choices) != 1 or data.get("usage") or "error" in data:
        return None
    fingerprint = data.get("system_fingerprint")
    if fingerprint is not None and type(fingerprint) is not str:
        return None  # the whole path refuses it
    item = choices[0]
    if type(item) is not dict or item.get("index") or item.get("logprobs"):
        return None
    delta = item.get("delta")
    if type(delta) is not dict or len(delta) != 1 or item.get("finish_reason") is not None:
        return None
    content = delta.get("content")
    return content if type(content) is str else None


def stream_decoder() -> Callable[[JSON], Item]:
    """One stream's events as chunks, or as their bare text (server/chunks.py) after the
    first: the stream's head (id, time, model, `system_fingerprint`) is made from the
    first, which is therefore always a whole chunk."""
    opened = False

    def decode(data: JSON) -> Item:
        nonlocal opened
        if opened:
            return chunk_from_openai(data)
        opened = True
        return whole_chunk_from_openai(data)

    return decode


def chunk_from_openai(data: JSON) -> Item:
    """One upstream stream event, after the first: its bare text if it carries nothing
    else, else the chunk (a usage-only event has no choices)."""
    text = _plain_text(data)
    return text if text is not None else whole_chunk_from_openai(data)


def whole_chunk_from_openai(data: JSON) -> chat_pb2.ChatCompletionChunk:
    """One upstream stream event as a chunk."""
    _raise_upstream_error(data)
    chunk = chat_pb2.ChatCompletionChunk()
    for item in data.get("choices") or ():
        choice = chunk.choices.add(index=item.get("index") or 0)
        delta = item.get("delta") or {}
        target = choice.delta
        if delta.get("role") is not None:
            target.role = delta["role"]
        if delta.get("content") is not None:
            target.content = delta["content"]
        if delta.get("refusal") is not None:
            target.refusal = delta["refusal"]
        if isinstance(reasoning := _reasoning(delta), str):
            target.reasoning_content = reasoning
        if delta.get("tool_calls"):
            _fill_tool_calls(target.tool_calls, delta["tool_calls"], indexed=True)
        if item.get("finish_reason") is not None:
            choice.finish_reason = item["finish_reason"]
            _stop_sequence(choice, item)
        if item.get("logprobs"):
            parse_into(item["logprobs"], choice.logprobs, strict=False)
    if data.get("usage"):  # on the last chunk only
        _fill_usage(chunk, data["usage"])
    if data.get("system_fingerprint"):
        chunk.system_fingerprint = data["system_fingerprint"]
    return chunk


def completion_as_chunk(data: JSON) -> chat_pb2.ChatCompletionChunk:
    """A whole upstream completion as the one chunk of an unchunked answer."""
    _raise_upstream_error(data)
    chunk = chat_pb2.ChatCompletionChunk()
    for item in data.get("choices") or ():
        choice = chunk.choices.add(index=item.get("index") or 0)
        message = item.get("message") or {}
        delta = choice.delta
        delta.role = message.get("role") or "assistant"
        if message.get("content") is not None:
            delta.content = message["content"]
        if message.get("refusal") is not None:
            delta.refusal = message["refusal"]
        if isinstance(reasoning := _reasoning(message), str):
            delta.reasoning_content = reasoning
        if message.get("tool_calls"):
            _fill_tool_calls(delta.tool_calls, message["tool_calls"], indexed=False)
        choice.finish_reason = item.get("finish_reason") or "stop"
        _stop_sequence(choice, item)
        if item.get("logprobs"):
            parse_into(item["logprobs"], choice.logprobs, strict=False)
    _fill_usage(chunk, data.get("usage"))
    if data.get("system_fingerprint"):
        chunk.system_fingerprint = data["system_fingerprint"]
    return chunk


def embedding_request_to_openai(request: embeddings_pb2.EmbeddingRequest, model: str) -> JSON:
    body: JSON = {"model": model, "input": list(request.input), "encoding_format": "float"}
    if request.HasField("dimensions"):
        body["dimensions"] = request.dimensions
    if request.user:
        body["user"] = request.user
    return body


def embeddings_from_openai(data: JSON) -> embeddings_pb2.EmbeddingResponse:
    response = embeddings_pb2.EmbeddingResponse()
    for position, item in enumerate(data["data"]):
        response.data.add(index=item.get("index", position), embedding=item["embedding"])
    usage = data.get("usage")
    prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    if isinstance(prompt, int):  # else the core estimates it
        response.usage.prompt_tokens = response.usage.total_tokens = prompt
    return response
