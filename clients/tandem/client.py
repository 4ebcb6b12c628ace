"""A small high-level client: stream a chat answer over gRPC or the native HTTP door."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import httpx
import orjson

from tandem.v1 import chat_pb2, chat_pb2_grpc

__all__ = ["DEFAULT_GRPC", "TandemError", "stream_chat"]

DEFAULT_GRPC = "127.0.0.1:50051"


class TandemError(Exception):
    """The gateway answered with an error."""


def stream_chat(
    prompt: str,
    *,
    model: str = "",
    key: str | None = None,
    grpc_target: str | None = None,
    http_base_url: str | None = None,
) -> Iterator[str]:
    """Yield the answer's text as it streams: over HTTP if a base URL is given, else gRPC."""
    if http_base_url:
        return _stream_http(http_base_url, prompt, model, key)
    return _stream_grpc(grpc_target or DEFAULT_GRPC, prompt, model, key)


def _stream_grpc(address: str, prompt: str, model: str, key: str | None) -> Iterator[str]:
    request = chat_pb2.ChatCompletionRequest(
        model=model, messages=[chat_pb2.ChatMessage(role="user", content=prompt)]
    )
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    with grpc.insecure_channel(address) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        try:
            for chunk in stub.StreamChatCompletion(request, metadata=metadata):
                for choice in chunk.choices:
                    if choice.index == 0 and choice.delta.content:
                        yield choice.delta.content
        except grpc.RpcError as exc:
            raise TandemError(f"{exc.code().name}: {exc.details()}") from None


def _stream_http(base_url: str, prompt: str, model: str, key: str | None) -> Iterator[str]:
    body: dict[str, object] = {"messages": [{"role": "user", "content": prompt}], "stream": True}
    if model:
        body["model"] = model
    headers = {"authorization": f"Bearer {key}"} if key else {}
    url = base_url.rstrip("/") + "/native/v1/chat/completions"
    try:
        with httpx.stream("POST", url, content=orjson.dumps(body), headers=headers) as response:
            if response.status_code != 200:
                response.read()
                raise TandemError(
                    f"HTTP {response.status_code}: {_error_message(response.content)}"
                )
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = orjson.loads(line[6:])
                if "error" in event:
                    raise TandemError(str(event["error"].get("message", event["error"])))
                for choice in event.get("choices", ()):
                    content = choice.get("delta", {}).get("content")
                    if choice.get("index") == 0 and content:
                        yield content
    except httpx.HTTPError as exc:
        raise TandemError(f"cannot reach {base_url}: {exc}") from None


def _error_message(body: bytes) -> str:
    try:
        return str(orjson.loads(body)["error"]["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return body.decode(errors="replace")[:200]
