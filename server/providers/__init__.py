"""Providers: one module per kind behind the `Provider` interface."""

from __future__ import annotations

from server.config import Config, ConfigError
from server.providers.anthropic import AnthropicProvider
from server.providers.base import Provider, Route
from server.providers.mock import MockProvider
from server.providers.openai import OpenAIProvider

__all__ = ["Provider", "Route", "build_providers"]


def build_providers(config: Config) -> dict[str, Provider]:
    """One provider object (with its pooled client) per configured provider."""
    providers: dict[str, Provider] = {}
    for i, entry in enumerate(config.providers):
        if entry.kind == "mock":
            providers[entry.name] = MockProvider(entry)
        elif entry.kind == "openai":
            providers[entry.name] = OpenAIProvider(entry)
        elif entry.kind == "anthropic":
            providers[entry.name] = AnthropicProvider(entry)
        else:
            raise ConfigError(f"providers[{i}].kind: kind {entry.kind} is not available yet")
    return providers
