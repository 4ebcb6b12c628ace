"""Providers: one module per kind behind the `Provider` interface."""

from __future__ import annotations

from collections.abc import Callable

from server.config import Config, ProviderConfig
from server.providers.anthropic import AnthropicProvider
from server.providers.base import Provider, Route
from server.providers.mock import MockProvider
from server.providers.ollama import OllamaProvider
from server.providers.openai import OpenAIProvider

__all__ = ["Provider", "Route", "build_providers"]


def _mock(entry: ProviderConfig, config: Config) -> Provider:
    return MockProvider(entry, max_answer_bytes=config.server.max_body_bytes)


_KINDS: dict[str, Callable[[ProviderConfig, Config], Provider]] = {
    "mock": _mock,
    "openai": lambda entry, config: OpenAIProvider(entry),
    "anthropic": lambda entry, config: AnthropicProvider(entry),
    "ollama": lambda entry, config: OllamaProvider(entry),
}


def build_providers(config: Config) -> dict[str, Provider]:
    """One provider object (with its pooled client) per configured provider."""
    return {entry.name: _KINDS[entry.kind](entry, config) for entry in config.providers}
