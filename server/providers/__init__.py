"""Providers: one module per kind behind the `Provider` interface."""

from __future__ import annotations

from collections.abc import Callable

from server.config import Config, ProviderConfig, ProviderKind
from server.providers.base import Provider, Route

__all__ = ["KINDS", "Provider", "Route", "build_providers"]


def _mock(entry: ProviderConfig, config: Config) -> Provider:
    from server.providers.mock import MockProvider

    return MockProvider(entry, max_answer_bytes=config.server.max_body_bytes)


def _openai(entry: ProviderConfig, config: Config) -> Provider:
    from server.providers.openai import OpenAIProvider

    return OpenAIProvider(entry, max_answer_bytes=config.server.max_body_bytes)


def _anthropic(entry: ProviderConfig, config: Config) -> Provider:
    from server.providers.anthropic import AnthropicProvider

    return AnthropicProvider(entry)


def _ollama(entry: ProviderConfig, config: Config) -> Provider:
    from server.providers.ollama import OllamaProvider

    return OllamaProvider(entry)


# how each kind of `ProviderKind` (server/config/) is built; each kind's module (and
# aiohttp, for the HTTP kinds) is imported only when configured
KINDS: dict[ProviderKind, Callable[[ProviderConfig, Config], Provider]] = {
    "mock": _mock,
    "openai": _openai,
    "anthropic": _anthropic,
    "ollama": _ollama,
}


def build_providers(config: Config) -> dict[str, Provider]:
    """One provider object (with its pooled client) per configured provider."""
    return {entry.name: KINDS[entry.kind](entry, config) for entry in config.providers}
