"""Budgets' scopes, headers and refusals (server/policy/spending.py): named as the
design names them, spelled in exact decimal dollars."""

from __future__ import annotations

import pytest

from server.config import ConfigError, Period, TierConfig, build_config
from server.context import ANONYMOUS, Caller, KeyNarrowing
from server.policy.spending import (
    BudgetPlan,
    budget_headers,
    budget_plans,
    budget_refusal,
    near_limit,
    scopes_at,
)
from server.usage.budget import BudgetScope, LedgerFilter, ScopeState, period_bounds
from server.usage.money import nanos_text

# 2026-12-07 12:00:00 UTC, a Monday
NOON_US = 1_796_644_800 * 1_000_000
HOUR_US = 3_600 * 1_000_000


def test_usd_is_exact_and_plain() -> None:
    assert nanos_text(5_000_000_000) == "5"
    assert nanos_text(48_000) == "0.000048"
    assert nanos_text(1) == "0.000000001"
    assert nanos_text(0) == "0"
    assert nanos_text(-1_500_000_000) == "-1.5"


def test_plans_name_the_scopes_of_a_key_and_of_its_tier_per_caller() -> None:
    tier = TierConfig.model_validate({"budget": {"usd": 5, "period": "daily"}})
    key = Caller(
        "alice",
        "free",
        key_id="ab12",
        key=KeyNarrowing(budget_nanos=7, budget_period="total"),
    )
    own, shared = budget_plans(key, tier, "key:ab12")
    assert own.name == "key:ab12:total"
    assert own.limit_nanos == 7
    assert own.ledger == LedgerFilter(key_id="ab12")
    assert shared.name == "tier:free:key:ab12:daily"
    assert shared.limit_nanos == 5_000_000_000
    assert shared.ledger == LedgerFilter(key_id="ab12", tier="free")
    [subject] = budget_plans(Caller("bob", "free"), tier, "sub:bob")
    assert subject.name == "tier:free:sub:bob:daily"
    assert subject.ledger == LedgerFilter(tier="free", user="bob", caller_kind="user")
    [anonymous] = budget_plans(ANONYMOUS, tier, "anonymous")
    assert anonymous.name == "tier:free:anonymous:daily"
    assert anonymous.ledger == LedgerFilter(tier="free", caller_kind="anonymous")
    assert budget_plans(Caller("carol", "free"), None, "sub:carol") == []


def _states(*specs: tuple[str, Period, int, int, int]) -> tuple[ScopeState, ...]:
    """(name, period, limit, spent, reserved) at noon."""
    states = []
    for name, period, limit, spent, reserved in specs:
        start, end = period_bounds(period, NOON_US)
        scope = BudgetScope(name, period, start, end, limit, LedgerFilter(key_id="k"))
        states.append(ScopeState(scope, spent, reserved))
    return tuple(states)


def test_headers_show_the_budget_with_the_least_remaining() -> None:
    states = _states(("a", "monthly", 100, 10, 0), ("b", "daily", 50, 45, 10))
    assert budget_headers(states, NOON_US) == [
        ("x-budget-limit-usd", "0.00000005"),
        ("x-budget-remaining-usd", "-0.000000005"),
        ("x-budget-reset", "12h0m0s"),
    ]
    [total] = _states(("t", "total", 100, 0, 0))
    assert [name for name, _ in budget_headers([total], NOON_US)] == [
        "x-budget-limit-usd",
        "x-budget-remaining-usd",
    ]


def test_a_refusal_waits_for_every_full_budget_and_never_for_a_total() -> None:
    daily, weekly = _states(("d", "daily", 100, 95, 0), ("w", "weekly", 100, 95, 0))
    refused = budget_refusal([daily, weekly], 10, NOON_US)
    assert refused.code == "budget_exceeded"
    assert refused.should_retry is False
    assert refused.retry_after_s == (7 * 24 - 12) * 3600  # the later: next Monday
    roomy_weekly = weekly._replace(spent_nanos=0)
    assert budget_refusal([daily, roomy_weekly], 10, NOON_US).retry_after_s == 12 * 3600
    [total] = _states(("t", "total", 100, 95, 0))
    assert budget_refusal([daily, total], 10, NOON_US).retry_after_s is None


def test_a_tier_budget_needs_a_store() -> None:
    sections = {"tiers": {"free": {"budget": {"usd": 5}}}}
    with pytest.raises(ConfigError, match=r"tiers\.free\.budget needs a store"):
        build_config({**sections, "usage": {"store": "none"}}, {})
    assert build_config(sections, {}).tiers["free"].budget is not None


def test_only_a_call_near_its_limit_waits_for_its_settlement() -> None:
    """Far from the limit a call's record goes with the next batch; with room for fewer
    than eight more like it, or under a tenth of the limit left, it waits."""
    plan = BudgetPlan("key:k:monthly", "monthly", 1_000_000, LedgerFilter(key_id="k"))
    [scope] = scopes_at([plan], 0)

    def state(spent: int, reserved: int) -> list[ScopeState]:
        return [ScopeState(scope, spent, reserved)]

    assert not near_limit(state(0, 1_000), 1_000)
    assert not near_limit(state(800_000, 1_000), 1_000)  # 199,000 left: 199 more calls
    assert near_limit(state(950_000, 1_000), 1_000)  # under a tenth left
    assert near_limit(state(0, 300_000), 100_000)  # 700,000 left: fewer than 8 more
    assert not near_limit(state(0, 100_000), 100_000)  # 900,000 left: 9 more
