"""A chat request to Anthropic's Messages API: the body it is sent.

System and developer messages become the `system` field (one string, or text
blocks when any message has parts or a cache mark); tool results become
`tool_result` blocks in a user turn; assistant tool calls become `tool_use`
blocks. `cache_control` travels unchanged (type, and ttl when set) on the
blocks, tool calls and tools that carry it; a message's own is its last
block's (its `tool_result`, or its text). `max_tokens` is required by
Anthropic: the request's, else the model's `max_tokens_default`. A field
Anthropic cannot honour is refused by name (400), never dropped silently.

Reasoning is Anthropic's extended thinking. A caller's `reasoning_budget_tokens`
is sent as it is, as `budget_tokens` (Anthropic judges it against `max_tokens`);
`reasoning_effort` alone enables it with the budget in `EFFORT_BUDGETS`
(with both, the lower budget). Anthropic counts thinking inside `max_tokens`
and requires `max_tokens > budget_tokens`. A caller's own `max_tokens` is
never raised: an effort's budget shrinks to fit under it, and if it cannot
keep Anthropic's minimum of 1024 the request is a 400 naming the field. The
model's default is the gateway's choice, so it is raised to budget + default
instead. An assistant message carrying reasoning and its signature goes back
up as a `thinking` block before its text (an unsigned one is dropped:
Anthropic rejects thinking it did not sign).
"""

from __future__ import annotations

from typing import Any, Literal

from tandem.v1 import chat_pb2

from server.translate.anthropic import MIN_THINKING_BUDGET
from server.translate.common import (
    DATA_URL,
    cannot_honour,
    max_tokens_asked,
    tool_arguments,
    tool_parameters,
)
from server.translate.extra import REASONING_SENT_BACK, ExtraFields, merge_extra
from server.translate.protocols import JSON, ChatRequestEncoder
from server.translate.reasoning import EFFORT_BUDGETS

__all__ = ["ANTHROPIC_VERSION", "UNSUPPORTED_FIELDS", "encode_chat_request"]

ANTHROPIC_VERSION = "2023-06-01"

# fields with no Anthropic equivalent; set at all, they are refused by name
UNSUPPORTED_FIELDS = (
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "presence_penalty",
    "frequency_penalty",
    "seed",
)
# the sampling fields Anthropic and the proto name alike
_SAMPLING: tuple[Literal["temperature", "top_p", "top_k"], ...] = ("temperature", "top_p", "top_k")


def _check_supported(request: chat_pb2.ChatCompletionRequest) -> None:
    for name in UNSUPPORTED_FIELDS:
        if name == "logit_bias":
            if request.logit_bias:
                raise cannot_honour(name, "cannot be honoured")
        elif request.HasField(name):  # type: ignore[arg-type]
            raise cannot_honour(name, "cannot be honoured")
    if request.HasField("n") and request.n != 1:
        raise cannot_honour("n", "only n = 1 is possible")
    if request.HasField("temperature") and request.temperature > 1:
        raise cannot_honour("temperature", "must be at most 1")
    if request.HasField("response_format") and request.response_format.type != "text":
        raise cannot_honour("response_format", "only type 'text' is possible")
    if request.HasField("reasoning_effort") or request.HasField("reasoning_budget_tokens"):
        # what Anthropic allows with thinking on
        if request.HasField("temperature") and request.temperature != 1:
            raise cannot_honour("temperature", "must be 1 (or unset) with reasoning")
        if request.HasField("top_k"):
            raise cannot_honour("top_k", "cannot be combined with reasoning")
        if request.HasField("top_p") and request.top_p < 0.95:
            raise cannot_honour("top_p", "must be at least 0.95 with reasoning")
        if request.tool_choice.mode == "required" or request.tool_choice.function.name:
            raise cannot_honour("tool_choice", "cannot force a tool with reasoning")


def _marked(block: JSON, holder: Any) -> JSON:
    """`block` with the cache mark of its part, message, tool or tool call, if it has one
    (a block's own is kept)."""
    if holder.HasField("cache_control") and "cache_control" not in block:
        mark = holder.cache_control
        block["cache_control"] = (
            {"type": mark.type, "ttl": mark.ttl} if mark.ttl else {"type": mark.type}
        )
    return block


def _image(url: str) -> JSON:
    match = DATA_URL.fullmatch(url)
    if match:
        source = {"type": "base64", "media_type": match["media"], "data": match["data"]}
    else:
        source = {"type": "url", "url": url}
    return {"type": "image", "source": source}


def _thinking(message: chat_pb2.ChatMessage) -> list[JSON]:
    """A signed reasoning as the thinking block Anthropic needs back, first in its turn."""
    if message.HasField("reasoning_content") and message.HasField("reasoning_signature"):
        block = {
            "type": "thinking",
            "thinking": message.reasoning_content,
            "signature": message.reasoning_signature,
        }
        return [block]
    return []


def _blocks(message: chat_pb2.ChatMessage, where: str) -> list[JSON]:
    if message.HasField("content"):
        return [{"type": "text", "text": message.content}] if message.content else []
    blocks = []
    for j, part in enumerate(message.parts):
        kind = part.WhichOneof("part")
        if kind in ("text", "refusal"):  # an earlier refusal is, to Anthropic, what was said
            blocks.append(_marked({"type": "text", "text": getattr(part, kind)}, part))
        elif kind == "image_url":
            blocks.append(_marked(_image(part.image_url.url), part))
        else:
            raise cannot_honour(f"{where}.content[{j}]", f"{part.type} parts cannot be sent")
    return blocks


def _tool_use(call: chat_pb2.ToolCall, where: str) -> JSON:
    arguments = tool_arguments(call, where)
    block = {"type": "tool_use", "id": call.id, "name": call.function.name, "input": arguments}
    return _marked(block, call)


def _marked_blocks(message: chat_pb2.ChatMessage, where: str) -> list[JSON]:
    """The message's blocks, its own cache mark on the last (unless that has one)."""
    blocks = _blocks(message, where)
    if blocks:
        _marked(blocks[-1], message)
    return blocks


def _system(messages: list[tuple[chat_pb2.ChatMessage, str]]) -> str | list[JSON]:
    """One string, as ever, unless a message has parts or a cache mark: then text blocks,
    as Anthropic's own clients send them (so that a cache mark keeps its place)."""
    if all(m.HasField("content") and not m.HasField("cache_control") for m, _ in messages):
        return "\n\n".join(m.content for m, _ in messages)
    for message, where in messages:
        for j, part in enumerate(message.parts):
            if part.WhichOneof("part") not in ("text", "refusal"):
                raise cannot_honour(f"{where}.content[{j}]", "Anthropic's system takes text only")
    return [block for m, where in messages for block in _marked_blocks(m, where)]


def _tool_result(message: chat_pb2.ChatMessage, where: str) -> JSON:
    content: str | list[JSON] = message.content
    if message.parts:
        content = _blocks(message, where)
    block = {"type": "tool_result", "tool_use_id": message.tool_call_id, "content": content}
    return _marked(block, message)


def _messages(
    request: chat_pb2.ChatCompletionRequest, left_out: list[str] | None
) -> tuple[str | list[JSON] | None, list[JSON]]:
    """(the system field, turns), consecutive turns of one role merged into one.
    Reasoning without its signature, which Anthropic cannot take back, is named in
    `left_out`."""
    system: list[tuple[chat_pb2.ChatMessage, str]] = []
    turns: list[JSON] = []
    unsigned = False
    for i, message in enumerate(request.messages):
        where = f"messages[{i}]"
        if message.HasField("reasoning_content") and not message.HasField("reasoning_signature"):
            unsigned = True
        if message.role in ("system", "developer"):
            system.append((message, where))
            continue
        if message.role == "tool":
            role = "user"
            blocks = [_tool_result(message, where)]
        else:
            role = message.role
            blocks = _thinking(message) + _marked_blocks(message, where)
            blocks += [
                _tool_use(c, f"{where}.tool_calls[{k}]") for k, c in enumerate(message.tool_calls)
            ]
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if unsigned and left_out is not None:
        left_out.append(REASONING_SENT_BACK)
    return (_system(system) if system else None), turns


def _tool_choice(request: chat_pb2.ChatCompletionRequest) -> JSON | None:
    choice: JSON | None = None
    if request.HasField("tool_choice"):
        mode = request.tool_choice.mode
        if mode == "auto":
            choice = {"type": "auto"}
        elif mode == "required":
            choice = {"type": "any"}
        elif mode == "none":
            choice = {"type": "none"}
        else:
            choice = {"type": "tool", "name": request.tool_choice.function.name}
    if request.HasField("parallel_tool_calls") and not request.parallel_tool_calls:
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    return choice


def _thinking_budget(
    request: chat_pb2.ChatCompletionRequest, bound: str | None, max_tokens: int
) -> int | None:
    """`budget_tokens`, None without reasoning: the caller's own as it is, else (or when
    lower) its effort's, shrunk under the caller's own `max_tokens` (the `bound` field)."""
    own = request.reasoning_budget_tokens if request.HasField("reasoning_budget_tokens") else None
    if request.HasField("reasoning_effort"):
        budget = EFFORT_BUDGETS[request.reasoning_effort]  # validated at the door
        if own is None or budget < own:
            if bound is None:
                return budget
            budget = min(budget, max_tokens - 1)
            if budget < MIN_THINKING_BUDGET:
                raise cannot_honour(
                    bound, f"must be above {MIN_THINKING_BUDGET} with reasoning_effort"
                )
            return budget
    if own is not None and own < MIN_THINKING_BUDGET:
        raise cannot_honour("reasoning_budget_tokens", f"must be at least {MIN_THINKING_BUDGET}")
    return own


def encode_chat_request(
    request: chat_pb2.ChatCompletionRequest,
    model: str,
    *,
    stream: bool,
    max_tokens_default: int | None = None,
    extra_fields: ExtraFields = "deny",
    left_out: list[str] | None = None,
) -> JSON:
    """The Messages API request; raises InvalidRequestError for what Anthropic cannot
    honour. `max_tokens_default` is the model's (without one, a request that sets no
    bound is refused: Anthropic requires `max_tokens`). The request's `extra_body`
    (Anthropic's fields the proto lacks) follows, as far as `extra_fields` lets it, in
    its order, never over what the gateway set; what is held back, and reasoning sent
    back unsigned, is added to `left_out`."""
    _check_supported(request)
    system, turns = _messages(request, left_out)
    max_tokens, thinking = _max_tokens(request, max_tokens_default)
    body: JSON = {"model": model, "max_tokens": max_tokens, "messages": turns}
    if thinking is not None:
        body["thinking"] = thinking
    if system:
        body["system"] = system
    for name in _SAMPLING:
        if request.HasField(name):
            body[name] = getattr(request, name)
    if request.stop:
        body["stop_sequences"] = list(request.stop)
    if request.tools:
        body["tools"] = [_tool(tool) for tool in request.tools]
    if (choice := _tool_choice(request)) is not None:
        body["tool_choice"] = choice
    if request.user:
        body["metadata"] = {"user_id": request.user}
    if stream:
        body["stream"] = True
    merge_extra(body, request, extra_fields, left_out)
    return body


def _max_tokens(
    request: chat_pb2.ChatCompletionRequest, default: int | None
) -> tuple[int, JSON | None]:
    """`max_tokens`, and `thinking` (None without reasoning): the caller's own bound is
    never raised; the model's default is raised by the thinking budget."""
    asked = max_tokens_asked(request)
    if asked is not None:
        bound: str | None = asked[0]
        max_tokens = asked[1]
    elif default is not None:
        bound, max_tokens = None, default
    else:
        raise cannot_honour("max_tokens", "is required by Anthropic")
    budget = _thinking_budget(request, bound, max_tokens)
    if budget is None:
        return max_tokens, None
    if bound is None:
        max_tokens += budget
    return max_tokens, {"type": "enabled", "budget_tokens": budget}


def _tool(tool: chat_pb2.Tool) -> JSON:
    sent: JSON = {"name": tool.function.name}
    if tool.function.description:
        sent["description"] = tool.function.description
    sent["input_schema"] = tool_parameters(tool.function) or {"type": "object"}
    return _marked(sent, tool)


_chat: ChatRequestEncoder = encode_chat_request
