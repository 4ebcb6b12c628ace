"""A request to an OpenAI-compatible provider: the chat or embeddings body it is sent."""

from __future__ import annotations

from collections.abc import Iterable

from tandem.v1 import chat_pb2, embeddings_pb2

from server.translate.common import cannot_honour, response_schema, tool_parameters
from server.translate.extra import (
    REASONING_SENT_BACK,
    TOOL_PARTS_HELD_BACK,
    ExtraFields,
    merge_extra,
)
from server.translate.openai.replies import encode_tool_calls
from server.translate.protocols import JSON, ChatRequestEncoder, EmbeddingRequestEncoder
from server.translate.reasoning import reasoning_effort

__all__ = ["encode_chat_request", "encode_embedding_request", "message_to_openai"]


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
    if kind == "file":
        file: JSON = {"file_data": part.file.file_data}
        if part.file.filename:
            file["filename"] = part.file.filename
        return {"type": "file", "file": file}
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


def _tool_texts(message: chat_pb2.ChatMessage) -> str | None:
    """A tool message's text parts as one text, where it has other parts (OpenAI's chat
    API takes text only in a tool message: an image there is a 400); else None."""
    if message.role != "tool" or all(p.WhichOneof("part") == "text" for p in message.parts):
        return None
    return "\n".join(p.text for p in message.parts if p.WhichOneof("part") == "text")


def _messages_to_openai(
    messages: Iterable[chat_pb2.ChatMessage], *, send_reasoning: bool, join_texts: bool
) -> tuple[list[JSON], list[str]]:
    """(the messages, the names of what was held back). A `reasoning_content` is sent
    back only where the provider says so: DeepSeek documents a 400 for input messages
    that carry it, and OpenAI and vLLM define no such input field. A tool message's
    parts other than text are held back. With `join_texts`, a message of text parts
    only is one string."""
    out = []
    held: dict[str, None] = {}
    for message in messages:
        item = message_to_openai(message)
        if join_texts and (text := _text_only(message)) is not None:
            item["content"] = text
        if (texts := _tool_texts(message)) is not None:
            item["content"] = texts
            held[TOOL_PARTS_HELD_BACK] = None
        if message.HasField("reasoning_content"):
            if send_reasoning:
                item["reasoning_content"] = message.reasoning_content
            else:
                held[REASONING_SENT_BACK] = None
        out.append(item)
    return out, list(held)


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


def encode_chat_request(
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
            body[name], held = _messages_to_openai(
                value, send_reasoning=send_reasoning, join_texts=join_texts
            )
            if left_out is not None:
                left_out += held
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


def encode_embedding_request(request: embeddings_pb2.EmbeddingRequest, model: str) -> JSON:
    body: JSON = {"model": model, "input": list(request.input), "encoding_format": "float"}
    if request.HasField("dimensions"):
        body["dimensions"] = request.dimensions
    if request.user:
        body["user"] = request.user
    return body


_chat: ChatRequestEncoder = encode_chat_request
_embedding: EmbeddingRequestEncoder = encode_embedding_request
