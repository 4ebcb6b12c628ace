"""The base class of the HTTP provider kinds, kept apart from `base.py` so that
aiohttp is imported only when an HTTP kind is configured."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from server.config import ProviderConfig
from server.context import CallContext
from server.providers.http_client import HttpClient
from server.providers.reads import decode

T = TypeVar("T")

__all__ = ["HttpProvider", "bearer"]


def bearer(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


class HttpProvider:
    """What the HTTP kinds share: a name, a retry budget and one pooled client."""

    def __init__(self, config: ProviderConfig, *, headers: Mapping[str, str]) -> None:
        self.name = config.name
        self.kind: str = config.kind
        self.max_retries = config.max_retries
        self.client = HttpClient(config, headers=headers)

    async def answer(
        self, path: str, body: dict[str, Any], ctx: CallContext, convert: Callable[[Any], T]
    ) -> T:
        """POST `body` unstreamed; its whole answer, `convert`ed (a malformed one is an
        upstream error: `reads.decode`)."""
        async with self.client.post(path, body, ctx, streaming=False) as response:
            raw = await response.read()
        return decode(raw, convert)

    async def aclose(self) -> None:
        await self.client.aclose()
