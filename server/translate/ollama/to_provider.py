"""A request to an Ollama server (`/api/chat`, `/api/embed`): the body it is sent.

Sampling fields go under `options` (`max_tokens` is `num_predict`, `top_k`
is `top_k`); images travel as base64 next to the message; tool call arguments
are JSON objects, not strings; a tool call's id travels as Ollama 0.12.10 on
spells it (`id`, a result's `tool_call_id`). Reasoning is Ollama's `thinking`,
and `reasoning_effort` (lowered to fit `reasoning_budget_tokens`: Ollama takes
no budget) is its `think` (see `THINK`). A field Ollama cannot honour is
refused by name (400).
"""

from __future__ import annotations

from tandem.v1 import chat_pb2, embeddings_pb2

from server.translate.common import (
    DATA_URL,
    cannot_honour,
    max_tokens_asked,
    response_schema,
    tool_arguments,
    tool_parameters,
)
from server.translate.ollama import SAMPLING_OPTIONS
from server.translate.protocols import JSON, ChatRequestEncoder, EmbeddingRequestEncoder
from server.translate.reasoning import reasoning_effort

__all__ = ["THINK", "encode_chat_request", "encode_embedding_request"]

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


def encode_chat_request(
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
    if (asked := max_tokens_asked(request)) is not None:
        options["num_predict"] = asked[1]
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


def encode_embedding_request(request: embeddings_pb2.EmbeddingRequest, model: str) -> JSON:
    body: JSON = {"model": model, "input": list(request.input)}
    if request.HasField("dimensions"):
        body["dimensions"] = request.dimensions
    return body


_chat: ChatRequestEncoder = encode_chat_request
_embedding: EmbeddingRequestEncoder = encode_embedding_request
