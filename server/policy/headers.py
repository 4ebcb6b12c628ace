"""The x-ratelimit-* headers (gRPC: trailing metadata), spelled as OpenAI sends them."""

from __future__ import annotations

import math

from server.policy.limiter import Budget, Decision

__all__ = ["format_duration", "rate_limit_headers"]


def _seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")


def format_duration(seconds: float) -> str:
    """`20ms`, `1.5s`, `1m0s`, `1h0m0s`: Go's duration spelling, rounded up to the ms."""
    ms = max(math.ceil(seconds * 1000 - 1e-6), 0)
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{_seconds(ms / 1000)}s"
    minutes, rest = divmod(ms, 60_000)
    hours, minutes = divmod(minutes, 60)
    spelled = f"{minutes}m{_seconds(rest / 1000) or '0'}s"
    return f"{hours}h{spelled}" if hours else spelled


def _pair(kind: str, budget: Budget) -> list[tuple[str, str]]:
    return [
        (f"x-ratelimit-limit-{kind}", str(budget.limit)),
        (f"x-ratelimit-remaining-{kind}", str(budget.remaining)),
        (f"x-ratelimit-reset-{kind}", format_duration(budget.reset_s)),
    ]


def rate_limit_headers(decision: Decision) -> list[tuple[str, str]]:
    headers = []
    if decision.requests is not None:
        headers += _pair("requests", decision.requests)
    if decision.tokens is not None:
        headers += _pair("tokens", decision.tokens)
    return headers
