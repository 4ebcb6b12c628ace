"""Prices: a call's cost equals genai-prices' own calculation to the nano, for every bundled
model, many usages and the times its prices change; the provider comes from
`price_provider`, else the URL, else the kind; a model's own price wins; mock models are
unpriced; genai-prices is never asked over the network, and only imported when needed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, FloatOperation, localcontext
from typing import Any

import pytest
from genai_prices import Usage, calc_price
from genai_prices.data_snapshot import get_snapshot
from genai_prices.types import (
    ModelInfo,
    ModelPrice,
    Provider,
    StartDateConstraint,
    TieredPrices,
    TimeOfDateConstraint,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.config import Config, build_config
from server.usage.prices import ListedPrice, Prices, schedule_of

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MODELS: list[tuple[Provider, ModelInfo]] = [
    (provider, model) for provider in get_snapshot().providers for model in provider.models
]


def at_us(when: datetime) -> int:
    return (when - EPOCH) // timedelta(microseconds=1)


def nanos(usd: Decimal) -> int:
    """genai-prices' total in nano-dollars, half up (the contract's rounding)."""
    with localcontext(prec=60) as ctx:
        return int((usd * 10**9).quantize(Decimal(1), rounding="ROUND_HALF_UP", context=ctx))


def one_model(model: ModelInfo) -> Prices:
    return Prices({"m": schedule_of(model, "test")}, {"m": "test"}, "test")


def expected(
    model: ModelInfo,
    provider: Provider,
    when: datetime,
    prompt: int,
    cached: int,
    cache_write: int,
    completion: int,
    reasoning: int,
) -> int:
    usage = Usage(
        input_tokens=prompt,
        cache_read_tokens=cached,
        cache_write_tokens=cache_write,
        output_tokens=completion,
        output_reasoning_tokens=reasoning,
    )
    return nanos(model.calc_price(usage, provider, genai_request_timestamp=when).total_price)


def instants(model: ModelInfo) -> Iterator[datetime]:
    """Times its price may change at, a microsecond either side: start dates, the ends of
    time-of-day prices (on an ordinary day), and a plain one."""
    yield datetime(2026, 12, 7, 19, 0, tzinfo=UTC)
    if isinstance(model.prices, ModelPrice):
        return
    for conditional in model.prices:
        constraint = conditional.constraint
        edges: list[datetime] = []
        if isinstance(constraint, StartDateConstraint):
            edges = [datetime.combine(constraint.start_date, time(), UTC)]
        elif isinstance(constraint, TimeOfDateConstraint):
            day = date(2026, 11, 5)
            edges = [
                datetime.combine(day, constraint.start_time).astimezone(UTC),
                datetime.combine(day, constraint.end_time).astimezone(UTC),
            ]
        for edge in edges:
            yield edge - timedelta(microseconds=1)
            yield edge


def tier_starts(model: ModelInfo) -> set[int]:
    prices = (
        [model.prices] if isinstance(model.prices, ModelPrice) else [c.prices for c in model.prices]
    )
    return {
        tier.start
        for price in prices
        for value in vars(price).values()
        if isinstance(value, TieredPrices)
        for tier in value.tiers
    }


def usages(model: ModelInfo) -> Iterator[tuple[int, int, int, int, int]]:
    """(prompt, cached, cache_write, completion, reasoning): none, each key alone, all of
    them, odd counts that round, and each tier's edges."""
    yield 0, 0, 0, 0, 0
    yield 1, 0, 0, 0, 0
    yield 0, 0, 0, 1, 0
    yield 10_000, 8_000, 0, 500, 0
    yield 12_000, 8_000, 3_000, 500, 0
    yield 1_000, 0, 0, 2_000, 1_500
    yield 7, 3, 2, 5, 3
    yield 123_457, 65_537, 4_099, 33_331, 1_001
    for start in tier_starts(model):
        for prompt in (start, start + 1):
            yield prompt, prompt // 3, prompt // 5, 1_000, 10


def test_every_bundled_model_costs_what_genai_prices_says() -> None:
    """Every model, its price at each time it changes, a spread of usages: equal to
    `ModelInfo.calc_price`, what `genai_prices.calc_price` runs once it has found the
    model (finding it by URL, id or kind: the tests of providers below)."""
    checked = 0
    for provider, model in MODELS:
        prices = one_model(model)
        for when in instants(model):
            for counts in usages(model):
                prompt, cached, cache_write, completion, reasoning = counts
                cost = prices.cost(
                    "m",
                    at_us(when),
                    prompt=prompt,
                    cached=cached,
                    cache_write=cache_write,
                    completion=completion,
                    reasoning=reasoning,
                )
                assert cost == (expected(model, provider, when, *counts), "priced"), (
                    provider.id,
                    model.id,
                    when,
                    counts,
                )
                checked += 1
    assert len(MODELS) > 2000
    assert checked > 20_000


def needs_calc_price(model: ModelInfo) -> bool:
    schedule = schedule_of(model, "")
    prices = (
        [schedule.fixed] if schedule.fixed is not None else list((schedule.by_id or {}).values())
    )
    return any(price is not None and price.exact is not None for price in prices)


def test_the_card_prices_almost_every_model_without_calc_price() -> None:
    """The fast path is the common one: only prices with keys of other units (audio,
    images, pages, characters) fall back to genai-prices' own calculation."""
    exact = [(provider.id, model.id) for provider, model in MODELS if needs_calc_price(model)]
    assert 0 < len(exact) < 100, exact  # those exercise the fallback in the tests above
    # priced for web searches and 1-hour cache writes too, which Tandem never reports
    sonnet = next(m for p, m in MODELS if (p.id, m.id) == ("anthropic", "claude-sonnet-4-5"))
    assert isinstance(sonnet.prices, ModelPrice)
    assert sonnet.prices.web_searches_kcount is not None
    assert sonnet.prices.cache_write_1h_mtok is not None
    assert not needs_calc_price(sonnet)


@st.composite
def usage_counts(draw: st.DrawFn) -> tuple[int, int, int, int, int]:
    prompt = draw(st.integers(0, 2_000_000))
    cached = draw(st.integers(0, prompt))
    cache_write = draw(st.integers(0, prompt - cached))
    completion = draw(st.integers(0, 300_000))
    reasoning = draw(st.integers(0, completion))
    return prompt, cached, cache_write, completion, reasoning


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pair=st.sampled_from(MODELS),
    counts=usage_counts(),
    when=st.datetimes(datetime(2024, 1, 1), datetime(2027, 12, 31), timezones=st.just(UTC)),
)
def test_any_usage_at_any_time_costs_what_genai_prices_says(
    pair: tuple[Provider, ModelInfo], counts: tuple[int, int, int, int, int], when: datetime
) -> None:
    provider, model = pair
    prompt, cached, cache_write, completion, reasoning = counts
    cost = one_model(model).cost(
        "m",
        at_us(when),
        prompt=prompt,
        cached=cached,
        cache_write=cache_write,
        completion=completion,
        reasoning=reasoning,
    )
    assert cost == (expected(model, provider, when, *counts), "priced")


@given(
    prompt=st.integers(-5, 50_000),
    cached=st.integers(-5, 90_000),
    cache_write=st.integers(-5, 90_000),
    completion=st.integers(-5, 50_000),
    reasoning=st.integers(-5, 90_000),
)
def test_counts_outside_their_parents_are_clamped_not_refused(
    prompt: int, cached: int, cache_write: int, completion: int, reasoning: int
) -> None:
    """An upstream may report reasoning beyond its completion tokens (or cache tokens beyond
    its prompt): genai-prices refuses those; the cost is the clamped counts'."""
    provider, model = next(
        (p, m) for p, m in MODELS if (p.id, m.id) == ("anthropic", "claude-haiku-4-5")
    )
    when = datetime(2026, 12, 7, tzinfo=UTC)
    clamped_prompt = max(prompt, 0)
    clamped_cached = min(max(cached, 0), clamped_prompt)
    clamped_write = min(max(cache_write, 0), clamped_prompt - clamped_cached)
    clamped_completion = max(completion, 0)
    clamped_reasoning = min(max(reasoning, 0), clamped_completion)
    cost = one_model(model).cost(
        "m",
        at_us(when),
        prompt=prompt,
        cached=cached,
        cache_write=cache_write,
        completion=completion,
        reasoning=reasoning,
    )
    want = expected(
        model,
        provider,
        when,
        clamped_prompt,
        clamped_cached,
        clamped_write,
        clamped_completion,
        clamped_reasoning,
    )
    assert cost == (want, "priced")


PROVIDERS = """
providers:
  - {name: demo, kind: mock}
  - {name: oai, kind: openai}
  - {name: claude, kind: anthropic}
  - {name: groq, kind: openai, base_url: "https://api.groq.com/openai/v1"}
  - {name: deepseek, kind: openai, base_url: "https://api.deepseek.com/v1"}
  - {name: together, kind: openai, base_url: "https://api.together.xyz/v1"}
  - {name: openrouter, kind: openai, base_url: "https://openrouter.ai/api/v1"}
  - {name: local, kind: openai, base_url: "http://127.0.0.1:18080/v1"}
  - {name: local-claude, kind: anthropic, base_url: "http://127.0.0.1:18081"}
  - {name: lab, kind: ollama}
  - {name: named, kind: openai, base_url: "http://127.0.0.1:18082/v1", price_provider: groq}
  - {name: demo-priced, kind: mock, price_provider: openai}
"""


def config(models: list[dict[str, Any]], providers: str = PROVIDERS) -> Config:
    import yaml

    return build_config({**yaml.safe_load(providers), "models": models}, {})


BY_URL = [
    # (provider, upstream, genai-prices' provider at the provider's URL, else its kind's)
    ("oai", "gpt-4o-mini", "openai"),
    ("claude", "claude-haiku-4-5-20251001", "anthropic"),
    ("groq", "llama-3.3-70b-versatile", "groq"),
    ("deepseek", "deepseek-reasoner", "deepseek"),
    ("together", "meta-llama/Llama-3.3-70B-Instruct-Turbo", "together"),
    ("openrouter", "anthropic/claude-haiku-4.5", "openrouter"),
    ("local", "gpt-4o-mini", "openai"),
    ("local-claude", "claude-haiku-4-5", "anthropic"),
    ("named", "llama-3.3-70b-versatile", "groq"),
    ("demo-priced", "gpt-4o-mini", "openai"),
]


@pytest.mark.parametrize(("provider", "upstream", "data_provider"), BY_URL)
def test_a_provider_is_priced_as_what_its_url_says_it_is(
    provider: str, upstream: str, data_provider: str
) -> None:
    """By `price_provider`, else the URL (`base_url`, or the kind's default), else the kind;
    each cost equal to genai-prices' `calc_price` asked the same way."""
    prices = Prices.from_config(config([{"name": "m", "provider": provider, "upstream": upstream}]))
    assert prices.sources["m"].startswith(f"genai-prices {data_provider}/")
    assert prices.version == "genai-prices 0.2.3"
    url = config([{"name": "m", "provider": provider}]).provider(provider).url
    by_url = provider not in ("local", "local-claude", "named", "demo-priced")
    for when in (datetime(2026, 12, 7, 3, 0, tzinfo=UTC), datetime(2026, 12, 7, 20, 0, tzinfo=UTC)):
        usage = Usage(
            input_tokens=12_000,
            cache_read_tokens=8_000,
            output_tokens=900,
            output_reasoning_tokens=300,
        )
        asked = (
            calc_price(usage, upstream, provider_api_url=url, genai_request_timestamp=when)
            if by_url
            else calc_price(
                usage, upstream, provider_id=data_provider, genai_request_timestamp=when
            )
        )
        assert asked.provider.id == data_provider
        cost = prices.cost(
            "m",
            at_us(when),
            prompt=12_000,
            cached=8_000,
            cache_write=0,
            completion=900,
            reasoning=300,
        )
        assert cost == (nanos(asked.total_price), "priced")
        assert cost[0] > 0


def test_the_designs_worked_examples() -> None:
    """docs/design/money.md 1.9, by hand: cached tokens at the cache price, cache writes at
    theirs, reasoning at the output price, and a provider without a cache price charging
    its input price for them."""
    prices = Prices.from_config(
        config(
            [
                {"name": "mini", "provider": "oai", "upstream": "gpt-4o-mini"},
                {"name": "haiku", "provider": "claude", "upstream": "claude-haiku-4-5"},
                {"name": "o4", "provider": "oai", "upstream": "o4-mini"},
                {"name": "llama", "provider": "groq", "upstream": "llama-3.3-70b-versatile"},
            ]
        )
    )
    now = at_us(datetime(2026, 12, 7, tzinfo=UTC))
    cached = {
        "prompt": 10_000,
        "cached": 8_000,
        "cache_write": 0,
        "completion": 500,
        "reasoning": 0,
    }
    assert prices.cost("mini", now, **cached) == (1_200_000, "priced")
    assert prices.cost("llama", now, **cached) == (6_295_000, "priced")
    assert prices.cost(
        "haiku", now, prompt=12_000, cached=8_000, cache_write=3_000, completion=500, reasoning=0
    ) == (8_050_000, "priced")
    assert prices.cost(
        "o4", now, prompt=1_000, cached=0, cache_write=0, completion=2_000, reasoning=1_500
    ) == (9_900_000, "priced")


def test_deepseek_costs_more_in_its_peak_hours() -> None:
    prices = Prices.from_config(
        config([{"name": "r", "provider": "deepseek", "upstream": "deepseek-reasoner"}])
    )
    counts = {
        "prompt": 1_000_000,
        "cached": 0,
        "cache_write": 0,
        "completion": 1_000_000,
        "reasoning": 0,
    }
    peak = prices.cost("r", at_us(datetime(2026, 12, 7, 16, 29, 59, tzinfo=UTC)), **counts)
    off_peak = prices.cost("r", at_us(datetime(2026, 12, 7, 16, 30, tzinfo=UTC)), **counts)
    assert (peak, off_peak) == ((2_740_000_000, "priced"), (685_000_000, "priced"))


def test_a_repricing_applies_from_its_start_date() -> None:
    prices = Prices.from_config(
        config([{"name": "o", "provider": "claude", "upstream": "claude-opus-4-6"}])
    )
    counts = {"prompt": 1_000_000, "cached": 0, "cache_write": 0, "completion": 0, "reasoning": 0}
    before = prices.cost(
        "o", at_us(datetime(2026, 3, 12, 23, 59, 59, 999999, tzinfo=UTC)), **counts
    )
    after = prices.cost("o", at_us(datetime(2026, 3, 13, tzinfo=UTC)), **counts)
    assert before != after


def test_a_tier_prices_every_token_by_the_prompt() -> None:
    """claude-sonnet-4-5 past 200k input tokens: all of them at the tier's price; the
    reservation takes the tier its prompt estimate falls in."""
    prices = Prices.from_config(
        config([{"name": "s", "provider": "claude", "upstream": "claude-sonnet-4-5"}])
    )
    now = at_us(datetime(2026, 12, 7, tzinfo=UTC))
    small = prices.cost(
        "s", now, prompt=100_000, cached=0, cache_write=0, completion=1_000, reasoning=0
    )
    large = prices.cost(
        "s", now, prompt=300_000, cached=0, cache_write=0, completion=1_000, reasoning=0
    )
    assert (small, large) == ((315_000_000, "priced"), (1_822_500_000, "priced"))
    assert prices.reserve("s", now, 100_000, 1_000) == 315_000_000
    assert prices.reserve("s", now, 300_000, 1_000) == 1_822_500_000
    assert prices.listed("s") == ListedPrice(
        Decimal(3), Decimal(15), Decimal("0.3"), Decimal("3.75")
    )


def test_a_models_own_price_wins_and_its_cache_prices_default_to_input() -> None:
    prices = Prices.from_config(
        config(
            [
                {
                    "name": "mine",
                    "provider": "oai",
                    "upstream": "gpt-4o-mini",
                    "price": {"input_per_mtok": 0.15, "output_per_mtok": "0.6"},
                },
                {
                    "name": "cached",
                    "provider": "demo",
                    "price": {
                        "input_per_mtok": 2,
                        "output_per_mtok": 8,
                        "cached_input_per_mtok": "0.5",
                        "cache_write_per_mtok": 2.5,
                    },
                },
            ]
        )
    )
    assert prices.sources == {"mine": "own price", "cached": "own price"}
    now = at_us(datetime(2026, 12, 7, tzinfo=UTC))
    # 10,000 input (8,000 cached, at the input price) x 0.15 + 500 x 0.6 per MTok = $0.0018
    assert prices.cost(
        "mine", now, prompt=10_000, cached=8_000, cache_write=0, completion=500, reasoning=0
    ) == (1_800_000, "priced")
    # 1,000 x 2 + 8,000 x 0.5 + 3,000 x 2.5 + 500 x 8 (reasoning is output) per MTok
    assert prices.cost(
        "cached", now, prompt=12_000, cached=8_000, cache_write=3_000, completion=500, reasoning=200
    ) == (17_500_000, "priced")
    assert prices.listed("mine") == ListedPrice(
        Decimal("0.15"), Decimal("0.6"), Decimal("0.15"), Decimal("0.15")
    )
    assert prices.reserve("cached", now, 1_000, 3) == 2_024_000
    # a tenth of a nano a token: under a half rounds down, a half up
    tiny = Prices.from_config(
        config(
            [
                {
                    "name": "tiny",
                    "provider": "demo",
                    "price": {"input_per_mtok": "0.0001", "output_per_mtok": "0.0001"},
                }
            ]
        )
    )
    rounded = [
        tiny.cost("tiny", now, prompt=n, cached=0, cache_write=0, completion=0, reasoning=0)[0]
        for n in (4, 5, 14, 15)
    ]
    assert rounded == [0, 1, 1, 2]


def test_mock_and_unknown_models_are_unpriced() -> None:
    prices = Prices.from_config(
        config(
            [
                {"name": "echo", "provider": "demo"},
                {"name": "llama", "provider": "lab", "upstream": "llama3.2:1b"},
                {"name": "ghost", "provider": "oai", "upstream": "no-such-model"},
            ]
        )
    )
    assert prices.sources == {"echo": "unpriced", "llama": "unpriced", "ghost": "unpriced"}
    for name in ("echo", "llama", "ghost", "not-configured"):
        assert prices.cost(
            name, 0, prompt=10, cached=0, cache_write=0, completion=10, reasoning=0
        ) == (0, "unpriced")
        assert prices.reserve(name, 0, 10, 10) is None
        assert prices.listed(name) is None


def test_floats_never_mix_with_money() -> None:
    """A YAML float becomes the Decimal of its shortest repr (0.1 is 0.1, not
    0.1000000000000000055...), and pricing, listing and reserving trap any float."""
    prices_config = config(
        [
            {
                "name": "mine",
                "provider": "demo",
                "price": {"input_per_mtok": 0.1, "output_per_mtok": 0.3},
            },
            {"name": "mini", "provider": "oai", "upstream": "gpt-4o-mini"},
        ]
    )
    price = prices_config.models[0].price
    assert price is not None
    assert (price.input_per_mtok, price.output_per_mtok) == (Decimal("0.1"), Decimal("0.3"))
    with localcontext() as ctx:
        ctx.traps[FloatOperation] = True
        prices = Prices.from_config(prices_config)
        for name in ("mine", "mini"):
            cost, _ = prices.cost(
                name, 0, prompt=3, cached=1, cache_write=1, completion=3, reasoning=1
            )
            assert type(cost) is int
            assert type(prices.reserve(name, 0, 3, 3)) is int
            listed = prices.listed(name)
            assert listed is not None
            assert all(
                type(getattr(listed, field)) is Decimal
                for field in (
                    "input_per_mtok",
                    "output_per_mtok",
                    "cached_input_per_mtok",
                    "cache_write_per_mtok",
                )
            )
    # 3 x 0.1 + 3 x 0.3 = 1.2 micro-dollars: exactly 1,200 nanos
    assert prices.cost("mine", 0, prompt=3, cached=0, cache_write=0, completion=3, reasoning=0) == (
        1_200,
        "priced",
    )


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_genai_prices_is_not_imported_when_no_model_needs_it() -> None:
    """Its import and data cost ~5 MiB in every worker: a config of mock models and models
    with their own price never loads it."""
    out = run_python(
        """
import sys
from server.config import build_config
from server.usage.prices import Prices
config = build_config({
    "providers": [{"name": "demo", "kind": "mock"}, {"name": "oai", "kind": "openai"}],
    "models": [
        {"name": "echo", "provider": "demo"},
        {"name": "mini", "provider": "oai", "price": {"input_per_mtok": 1, "output_per_mtok": 2}},
    ],
}, {})
prices = Prices.from_config(config)
print(prices.version, "|", prices.cost("mini", 0, prompt=1, cached=0, cache_write=0, completion=1, reasoning=0))
print(sorted(m for m in sys.modules if m.startswith("genai_prices")))
"""
    )
    assert out.splitlines() == ["genai-prices not loaded | (3000, 'priced')", "[]"]


def test_pricing_never_opens_a_socket() -> None:
    """Only the bundled data: no update thread, no download, from import to a cost."""
    out = run_python(
        """
import socket
def refuse(*args, **kwargs):
    raise AssertionError("a socket was opened")
socket.socket.__init__ = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
import threading
from server.config import build_config
from server.usage.prices import Prices
config = build_config({
    "providers": [{"name": "groq", "kind": "openai", "base_url": "https://api.groq.com/openai/v1"}],
    "models": [{"name": "llama", "provider": "groq", "upstream": "llama-3.3-70b-versatile"}],
}, {})
prices = Prices.from_config(config)
print(prices.cost("llama", 0, prompt=10, cached=0, cache_write=0, completion=10, reasoning=0)[1])
print(prices.listed("llama") is not None, threading.active_count())
"""
    )
    assert out.splitlines() == ["priced", "True 1"]
