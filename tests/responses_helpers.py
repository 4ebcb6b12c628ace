"""What the Responses door's live tests share (test_responses_door, _store, _native,
_items): the JWT their gateways verify and the callers it signs, how a caller calls
(`sdk_for`, `raw`, `post`), a gateway's models over the module's `fake`, a function
tool, and a stream's events checked."""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt
import openai

from tests.servers import TandemProcess
from tests.sse import named_events

__all__ = [
    "ADMIN_KEY",
    "AUTH",
    "CALLER",
    "ECHO_AND_RELAY",
    "WEATHER",
    "post",
    "raw",
    "sdk_for",
    "stream_events",
    "token",
]

SECRET = "responses-tests-secret-0123456789abcdef"
ADMIN_KEY = "responses-tests-admin-key"
# a gateway's `auth`: callers by JWT (`token`), the admin by ADMIN_KEY (`usage_records`)
AUTH = f'auth: {{required: true, admin_keys: ["{ADMIN_KEY}"], jwt: {{secret: "{SECRET}"}}}}'
CALLER = "responder"  # the `sub` a test calls as unless it says another
# a gateway's providers, models and tiers (a config fragment for `FakeUpstream.filled`):
# `echo` on the mock (it echoes the input), the default of tier free;
# `relay` on the module's fake, as `relay-upstream`
ECHO_AND_RELAY = """
providers:
  - {name: demo, kind: mock}
  - {name: up, kind: openai, base_url: "%(url)s", api_key: "%(key)s", max_retries: 0}
models:
  - {name: echo, provider: demo}
  - {name: relay, provider: up, upstream: relay-upstream}
tiers:
  free: {default_model: echo}
"""
WEATHER: Any = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}


def token(sub: str = CALLER, tier: str = "free") -> str:
    """A JWT for `sub` in `tier`, good for ten minutes."""
    claims = {"sub": sub, "tier": tier, "exp": int(time.time()) + 600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def sdk_for(gateway: TandemProcess, sub: str = CALLER, tier: str = "free") -> Any:
    """The official SDK as `sub`, typed loosely (its overloads fight the dict literals
    of tests)."""
    return openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=token(sub, tier), max_retries=0)


def raw(
    gateway: TandemProcess,
    method: str,
    path: str,
    sub: str = CALLER,
    headers: dict[str, str] | None = None,
    **kw: Any,
) -> httpx.Response:
    """`method path` over plain HTTP as `sub`, with `headers` besides its token."""
    sent = {"authorization": f"Bearer {token(sub)}", **(headers or {})}
    return httpx.request(method, f"{gateway.base_url}{path}", headers=sent, timeout=30, **kw)


def post(gateway: TandemProcess, body: dict[str, Any], sub: str = CALLER) -> httpx.Response:
    """`POST /v1/responses` of `body` as `sub`."""
    return raw(gateway, "POST", "/v1/responses", sub, json=body)


def stream_events(response: httpx.Response) -> list[tuple[str, Any]]:
    """A Responses stream's named events, in order; each name its data's `type`, and
    `sequence_number` rising from 0."""
    out = named_events(response)
    assert [data["type"] for _, data in out] == [name for name, _ in out]
    assert [data["sequence_number"] for _, data in out] == list(range(len(out)))
    return out
