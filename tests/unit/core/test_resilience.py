"""The retry loop any stream opens through (`open_first`): a chat's, and a relayed
Responses call's. Retries on the same route, then the chain's next, until a first item."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from server.config import ModelConfig
from server.context import CallContext
from server.core import resilience
from server.core.resilience import open_first
from server.errors import InvalidRequestError, UpstreamError, UpstreamFailure, UpstreamTimeoutError
from server.providers.base import Provider, Route


@dataclass
class Scripted:
    """A provider-like object: `max_retries`, and what each attempt meets."""

    name: str
    script: list[str]
    max_retries: int = 1
    kind: str = "openai"


@dataclass
class Attempts:
    """What the loop tells the ledger: each attempt, and each failure."""

    tried: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def trying(self, route: Route) -> None:
        self.tried.append(route.provider.name)

    def failed(self, failure: UpstreamFailure, usage: Any = None) -> None:
        self.failures.append(type(failure).__name__)


def route(provider: Scripted) -> Route:
    model = ModelConfig(name=f"m-{provider.name}", provider=provider.name)
    return Route(model=model, provider=cast(Provider, provider))


async def attempt(provider: Scripted) -> AsyncGenerator[str, None]:
    outcome = provider.script.pop(0)
    if outcome == "retryable":
        raise UpstreamError("down", retryable=True)
    if outcome == "timeout":
        raise UpstreamTimeoutError("slow", retryable=True, sent=True)
    if outcome == "final":
        raise UpstreamError("broken")
    if outcome == "invalid":
        raise InvalidRequestError("bad", param="x")
    yield f"{provider.name}:first"
    yield f"{provider.name}:second"


def start(r: Route) -> AsyncGenerator[str, None]:
    return attempt(cast(Scripted, r.provider))


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resilience, "backoff_s", lambda retry, retry_after_s: 0.0)


async def test_a_retryable_failure_is_asked_again_on_the_same_route() -> None:
    heard = Attempts()
    a = Scripted("a", ["retryable", "ok"])
    served, stream, first = await open_first(
        [route(a)], start, CallContext("r", "responses"), attempts=heard
    )
    assert (served.provider.name, first) == ("a", "a:first")
    assert await anext(stream) == "a:second"
    assert (heard.tried, heard.failures) == (["a", "a"], ["UpstreamError"])


async def test_a_final_failure_moves_on_to_the_next_route() -> None:
    heard = Attempts()
    a, b = Scripted("a", ["final"]), Scripted("b", ["ok"])
    served, _, first = await open_first(
        [route(a), route(b)], start, CallContext("r", "responses"), attempts=heard
    )
    assert (served.provider.name, first, heard.tried) == ("b", "b:first", ["a", "b"])


async def test_when_every_attempt_fails_the_last_failure_says_how_many() -> None:
    a = Scripted("a", ["retryable", "timeout"])
    with pytest.raises(UpstreamTimeoutError, match=r"slow \(after 2 attempts\)"):
        await open_first([route(a)], start, CallContext("r", "responses"), attempts=Attempts())


async def test_the_callers_error_is_not_retried() -> None:
    heard = Attempts()
    a, b = Scripted("a", ["invalid"]), Scripted("b", ["ok"])
    with pytest.raises(InvalidRequestError):
        await open_first([route(a), route(b)], start, CallContext("r", "responses"), attempts=heard)
    assert heard.tried == ["a"]


async def test_an_attempt_with_nothing_to_say_fails() -> None:
    async def empty(r: Route) -> AsyncGenerator[str, None]:
        return
        yield  # an async generator that yields nothing

    with pytest.raises(UpstreamError, match="empty answer"):
        await open_first(
            [route(Scripted("a", [], max_retries=0))],
            empty,
            CallContext("r", "responses"),
            attempts=Attempts(),
        )
