"""`stream_chat`: the answer's text of one prompt, over gRPC (on `Tandem`) or the native
HTTP door (with the standard library: the package needs no HTTP client). Kept for
`tandem chat PROMPT` until it is built on `Tandem` itself."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from tandem.client._channel import DEFAULT_TARGET
from tandem.client._errors import TandemError
from tandem.client._events import TextDelta
from tandem.client._sync import Tandem

__all__ = ["DEFAULT_GRPC", "stream_chat"]

DEFAULT_GRPC = DEFAULT_TARGET


def stream_chat(
    prompt: str,
    *,
    model: str = "",
    key: str | None = None,
    grpc_target: str | None = None,
    http_base_url: str | None = None,
) -> Iterator[str]:
    """Yield the answer's text as it streams: over HTTP if a base URL is given, else gRPC.
    Errors are TandemError."""
    if http_base_url:
        return _stream_http(http_base_url, prompt, model, key)
    return _stream_grpc(grpc_target or DEFAULT_GRPC, prompt, model, key)


def _stream_grpc(target: str, prompt: str, model: str, key: str | None) -> Iterator[str]:
    messages = [{"role": "user", "content": prompt}]
    with Tandem(target, key=key) as client, client.stream(messages, model=model) as events:
        for event in events:
            if isinstance(event, TextDelta) and event.index == 0:
                yield event.text


def _stream_http(base_url: str, prompt: str, model: str, key: str | None) -> Iterator[str]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}], "stream": True}
    if model:
        body["model"] = model
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    url = base_url.rstrip("/") + "/native/v1/chat/completions"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request) as response:
            for raw in response:
                line = raw.decode().rstrip("\r\n")
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    raise TandemError(str(event["error"].get("message", event["error"])))
                for choice in event.get("choices", ()):
                    content = choice.get("delta", {}).get("content")
                    if choice.get("index") == 0 and content:
                        yield content
    except urllib.error.HTTPError as exc:
        raise TandemError(f"HTTP {exc.code}: {_error_message(exc.read())}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise TandemError(f"cannot reach {base_url}: {exc}") from None


def _error_message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")[:200]
