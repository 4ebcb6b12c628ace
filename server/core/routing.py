"""From the model a caller names to the provider that serves it."""

from __future__ import annotations

from collections.abc import Mapping

from server.config import Config, TierConfig
from server.context import Caller
from server.errors import (
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    echoed,
)
from server.providers.base import Provider, Route

__all__ = ["Router"]


class Router:
    def __init__(self, config: Config, providers: Mapping[str, Provider]) -> None:
        self._tiers = config.tiers
        self._routes = {
            m.name: Route(model=m, provider=providers[m.provider]) for m in config.models
        }
        self._chains = {
            name: (route, *(self._routes[f] for f in route.model.fallbacks))
            for name, route in self._routes.items()
        }

    @property
    def routes(self) -> list[Route]:
        return list(self._routes.values())

    def known(self, name: str) -> bool:
        """A model of that public name is configured."""
        return name in self._routes

    def resolve(self, requested: str, caller: Caller) -> Route:
        """The route for `requested`, or the caller's tier default when it is empty.

        Unknown model: NotFoundError. Outside the caller's tier, or its API key's
        `models`: PermissionDeniedError.
        """
        tier = self._tiers.get(caller.tier)
        name = requested or (tier.default_model if tier else None)
        if not name:
            raise InvalidRequestError("model: is required (the tier has no default)", param="model")
        route = self._routes.get(name)
        if route is None:
            raise NotFoundError(
                f"model {echoed(name)!r} not found", param="model", code="model_not_found"
            )
        if not _allows(tier, caller, name):
            whose = (
                "this API key"
                if _tier_allows(tier, caller, name)
                else f"tier {echoed(caller.tier)!r}"
            )
            raise PermissionDeniedError(
                f"model {echoed(name)!r} is not available to {whose}", param="model"
            )
        return route

    def chain(self, route: Route) -> tuple[Route, ...]:
        """The route, then its model's fallbacks in order, whatever the caller's tier allows
        (fallbacks are the operator's routing)."""
        return self._chains[route.model.name]

    def visible(self, caller: Caller) -> list[Route]:
        """The routes the caller's tier (and API key) may use."""
        tier = self._tiers.get(caller.tier)
        return [r for name, r in self._routes.items() if _allows(tier, caller, name)]


def _allows(tier: TierConfig | None, caller: Caller, name: str) -> bool:
    """The caller's tier has the model, and so does its API key if it narrows them."""
    key = caller.key
    if key is not None and key.models is not None and name not in key.models:
        return False
    return _tier_allows(tier, caller, name)


def _tier_allows(tier: TierConfig | None, caller: Caller, name: str) -> bool:
    return caller.admin or tier is None or tier.models is None or name in tier.models
