"""How hard a model reasons, for every provider kind: a level (OpenAI's
`reasoning_effort`), a budget of thinking tokens (Anthropic's `budget_tokens`), or
both, and the one a kind takes never more than the caller allowed."""

from __future__ import annotations

from tandem.v1 import chat_pb2

__all__ = ["EFFORT_BUDGETS", "reasoning_effort"]

# reasoning_effort -> thinking tokens, lowest level first: Anthropic's budget for each of
# OpenAI's levels (1024 is Anthropic's minimum)
EFFORT_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384}
_LEVELS = tuple(EFFORT_BUDGETS)


def reasoning_effort(request: chat_pb2.ChatCompletionRequest) -> str | None:
    """The level for a provider that takes one: `reasoning_effort`, lowered to the
    highest level whose budget fits in `reasoning_budget_tokens` (a caller's budget is
    never exceeded; below every level's, the least: "minimal"). None: not asked for."""
    effort = request.reasoning_effort if request.HasField("reasoning_effort") else None
    if not request.HasField("reasoning_budget_tokens"):
        return effort
    budget = request.reasoning_budget_tokens
    within = next((e for e in reversed(_LEVELS) if EFFORT_BUDGETS[e] <= budget), _LEVELS[0])
    if effort is None or _LEVELS.index(within) < _LEVELS.index(effort):
        return within
    return effort
