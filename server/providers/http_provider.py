"""The base class of the HTTP provider kinds, kept apart from `base.py` so that
aiohttp is imported only when an HTTP kind is configured."""

from __future__ import annotations

from collections.abc import Mapping

from server.config import ProviderConfig
from server.providers.http_client import HttpClient

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

    async def aclose(self) -> None:
        await self.client.aclose()
