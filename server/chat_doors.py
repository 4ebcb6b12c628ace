"""The two doors `tandem chat` talks through: gRPC with the Python client
(`tandem.client.Tandem`), or the native HTTP door's SSE (`--http`).

A door streams one answer's text for a whole conversation; leaving the
iteration early (Ctrl-C, `close()`) ends the call on the wire: the gRPC call
is cancelled, the HTTP connection closed, and the gateway cancels upstream.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Sequence
from typing import Protocol

import httpx
import orjson

__all__ = ["DEFAULT_GRPC", "ChatError", "Door", "GrpcDoor", "HttpDoor", "Message"]

DEFAULT_GRPC = "127.0.0.1:50051"

Message = dict[str, str]  # OpenAI-style: {"role": "user", "content": "hi"}


class ChatError(Exception):
    """A call failed; `str()` is the one line to show."""


class Door(Protocol):
    def stream(self, messages: Sequence[Message], model: str) -> Generator[str, None, None]:
        """The answer's text (choice 0) as it streams; ChatError if the call fails."""
        ...

    def close(self) -> None: ...


class GrpcDoor:
    """gRPC through the Python client: one channel for the whole session."""

    def __init__(self, target: str | None, key: str | None) -> None:
        from tandem.client import Tandem

        self._client = Tandem(target or DEFAULT_GRPC, key=key)

    def stream(self, messages: Sequence[Message], model: str) -> Generator[str, None, None]:
        from tandem.client import TandemError, TextDelta

        try:
            with self._client.stream(list(messages), model=model) as events:
                for event in events:
                    if isinstance(event, TextDelta) and event.index == 0 and event.text:
                        yield event.text
        except TandemError as exc:
            raise ChatError(str(exc)) from None  # `NOT_FOUND: model 'ghost' not found`

    def close(self) -> None:
        self._client.close()


class HttpDoor:
    """The native door, `POST {base_url}/native/v1/chat/completions` streamed as SSE,
    over one connection pool for the whole session."""

    def __init__(self, base_url: str, key: str | None) -> None:
        key = key or os.environ.get("TANDEM_API_KEY")
        self._base_url = base_url
        self._url = base_url.rstrip("/") + "/native/v1/chat/completions"
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(headers=headers, timeout=httpx.Timeout(None, connect=10.0))

    def stream(self, messages: Sequence[Message], model: str) -> Generator[str, None, None]:
        body: dict[str, object] = {"messages": list(messages), "stream": True}
        if model:
            body["model"] = model
        try:
            with self._http.stream("POST", self._url, content=orjson.dumps(body)) as response:
                if response.status_code != 200:
                    response.read()
                    message = _error_message(response.content)
                    raise ChatError(f"HTTP {response.status_code}: {message}")
                for line in response.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    content = _content(line[6:])
                    if content:
                        yield content
        except httpx.HTTPError as exc:
            raise ChatError(f"cannot reach {self._base_url}: {exc}") from None

    def close(self) -> None:
        self._http.close()


def _content(data: str) -> str | None:
    """The first choice's text of one SSE event, raising ChatError for an error event or
    one that is not the native door's chunk (one line, never a traceback)."""
    try:
        event = orjson.loads(data)
        if "error" in event:
            error = event["error"]
            raise ChatError(str(error.get("message", error) if isinstance(error, dict) else error))
        for choice in event.get("choices", ()):
            content = choice.get("delta", {}).get("content")
            if choice.get("index") == 0 and content:
                return str(content)
    except (ValueError, AttributeError, TypeError):
        raise ChatError(f"the gateway sent an event that is not a chunk: {data[:80]!r}") from None
    return None


def _error_message(body: bytes) -> str:
    try:
        return str(orjson.loads(body)["error"]["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return body.decode(errors="replace")[:200]
