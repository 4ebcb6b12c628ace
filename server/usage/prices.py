"""What a request costs: each configured model's price, built once at start.

A model's own `price` (config) wins; else genai-prices' bundled data prices its
`upstream` name at the provider named by `price_provider`, else the one genai-prices
matches to the provider's URL, else the kind's (`openai`, `anthropic`); `ollama` and
`mock` models are unpriced unless one of those applies. Never genai-prices' network
updater, never a custom snapshot: the data is the pinned release's.

Per request, `cost` takes the price in force at the request's arrival
(`ModelInfo.get_prices`: start dates, DeepSeek's hours) and prices the tokens with a
card of that price's rates, ~2 us, where genai-prices' `calc_price` takes ~50 us
(docs/design/money.md 1.8); the tests pin card == `calc_price` to the nano over every
bundled model. A price with keys the card does not know (audio, images, pages...) is
priced by its own `ModelPrice.calc_price`. Money is never a float: prices are `Decimal`
(config, genai-prices' data, the listing), a card holds them as exact integers over a
power of ten, and a cost is integer nano-dollars rounded half up once, at the end.

genai-prices (+5 MiB of RSS, design 1.7) is imported only when some model may be priced
by it: a config of mock models, or of models with their own price, never loads it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Literal, Protocol

from server.config import Config, ModelConfig, ProviderConfig

if TYPE_CHECKING:
    from genai_prices.data_snapshot import DataSnapshot
    from genai_prices.types import ModelInfo
    from genai_prices.types import ModelPrice as DataPrice

__all__ = ["CostSource", "ListedPrice", "PriceCard", "Prices"]

CostSource = Literal["priced", "unpriced"]
# genai-prices' provider for a kind whose URL it does not know (a local OpenAI-compatible
# server is priced as OpenAI's models); `ollama` and `mock` have none
KIND_PROVIDERS: Mapping[str, str] = {"openai": "openai", "anthropic": "anthropic"}
# the price keys a card prices (genai-prices' data_units.py): per million tokens, and per
# thousand requests (charged once a call)
_TOKEN_KEYS = ("input_mtok", "cache_read_mtok", "cache_write_mtok", "output_mtok")
_REASONING_KEY = "output_reasoning_mtok"
_REQUEST_KEY = "requests_kcount"
# keys whose usage Tandem never reports, so they cost 0 whatever their price: tool calls,
# and cache writes by lifetime (cache writes without a lifetime are priced by
# `cache_write_mtok`, their parent)
_UNREPORTED_KEYS = frozenset(
    {
        "cache_write_5m_mtok",
        "cache_write_1h_mtok",
        "web_searches_kcount",
        "social_searches_kcount",
        "storage_searches_kcount",
        "code_executions_kcount",
        "rerank_searches_kcount",
    }
)
_CARD_KEYS = frozenset({*_TOKEN_KEYS, _REASONING_KEY, _REQUEST_KEY}) | _UNREPORTED_KEYS
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ListedPrice:
    """A model's price now, in US dollars per million tokens (the models listing)."""

    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal
    cache_write_per_mtok: Decimal


@dataclass(frozen=True, slots=True)
class Tiered:
    """A price by the call's input tokens ("cliff" tiers, as genai-prices' `TieredPrices`):
    past a tier's start, all the key's tokens cost that tier's price."""

    base: int
    tiers: tuple[tuple[int, int], ...]  # (start, price), highest start first

    def at(self, input_tokens: int) -> int:
        for start, price in self.tiers:
            if input_tokens > start:
                return price
        return self.base


Rate = int | Tiered


def _rate(rate: Rate | None, input_tokens: int) -> int | None:
    return rate.at(input_tokens) if isinstance(rate, Tiered) else rate


class _TieredSource(Protocol):
    """genai-prices' `TieredPrices`, read without importing it."""

    @property
    def base(self) -> Decimal: ...
    @property
    def tiers(self) -> Sequence[_TierSource]: ...


class _TierSource(Protocol):
    @property
    def start(self) -> int: ...
    @property
    def price(self) -> Decimal: ...


PriceSource = Decimal | _TieredSource


@dataclass(frozen=True, slots=True)
class PriceCard:
    """One price's rates, made integers once so a call is priced exactly in integer
    arithmetic (~1 us; Decimal's context methods took ~10): each rate is US dollars per
    million tokens (`request`: per thousand calls) times `unit`, a power of ten that makes
    every rate of the card whole. `None` is a key without a price, whose tokens fall into
    their parent's as in genai-prices (cache reads and writes are input, reasoning is
    output)."""

    unit: int
    input: Rate | None
    output: Rate | None
    cache_read: Rate | None
    cache_write: Rate | None
    reasoning: Rate | None
    request: Rate | None
    listed: ListedPrice

    @classmethod
    def of(
        cls,
        *,
        input: PriceSource | None,
        output: PriceSource | None,
        cache_read: PriceSource | None = None,
        cache_write: PriceSource | None = None,
        reasoning: PriceSource | None = None,
        request: PriceSource | None = None,
    ) -> PriceCard:
        """A card of exact Decimal prices (US dollars per million tokens, per thousand
        calls for `request`), tiered or not."""
        sources = (input, output, cache_read, cache_write, reasoning, request)
        decimals = [d for source in sources for d in _decimals(source)]
        places = max((-int(d.as_tuple().exponent) for d in decimals), default=0)
        unit = 10 ** max(places, 0)
        rates = [_scaled(source, unit) for source in sources]
        input_price = _base(input)
        listed = ListedPrice(
            input_per_mtok=input_price,
            output_per_mtok=_base(output),
            cached_input_per_mtok=_base(cache_read) if cache_read is not None else input_price,
            cache_write_per_mtok=_base(cache_write) if cache_write is not None else input_price,
        )
        input_rate, output_rate, read_rate, write_rate, reasoning_rate, request_rate = rates
        return cls(
            unit,
            input_rate,
            output_rate,
            read_rate,
            write_rate,
            reasoning_rate,
            request_rate,
            listed,
        )

    def cost_nanos(
        self, prompt: int, cached: int, cache_write: int, completion: int, reasoning: int
    ) -> int:
        """The cost of counts already clamped (children within their parents)."""
        total = 0  # micro-dollars x unit: $/MTok x unit x tokens
        leaf_input = prompt
        if (price := _rate(self.cache_read, prompt)) is not None:
            total += price * cached
            leaf_input -= cached
        if (price := _rate(self.cache_write, prompt)) is not None:
            total += price * cache_write
            leaf_input -= cache_write
        if (price := _rate(self.input, prompt)) is not None:
            total += price * leaf_input
        leaf_output = completion
        if (price := _rate(self.reasoning, prompt)) is not None:
            total += price * reasoning
            leaf_output -= reasoning
        if (price := _rate(self.output, prompt)) is not None:
            total += price * leaf_output
        if (price := _rate(self.request, prompt)) is not None:
            total += price * 1000  # $/K calls x 1 call = 1,000 micro-dollars x price
        return _rounded(total * 1000, self.unit)

    def reserve_nanos(self, prompt: int, output: int) -> int:
        """The prompt at the input price, the output at the output price, both at the tier
        the prompt falls in (the contract's reservation)."""
        total = 0
        if (price := _rate(self.input, prompt)) is not None:
            total += price * prompt
        if (price := _rate(self.output, prompt)) is not None:
            total += price * output
        return _rounded(total * 1000, self.unit)


def _decimals(source: PriceSource | None) -> list[Decimal]:
    if source is None:
        return []
    if isinstance(source, Decimal):
        return [source]
    return [source.base, *(tier.price for tier in source.tiers)]


def _whole(price: Decimal, unit: int) -> int:
    """`price` x `unit`, exactly (it is whole by the choice of `unit`)."""
    sign, digits, exponent = price.as_tuple()
    assert isinstance(exponent, int), price  # finite
    assert sign == 0, price  # not negative
    numerator = int("".join(map(str, digits)))
    if exponent >= 0:
        return numerator * unit * int(10**exponent)
    return numerator * unit // int(10**-exponent)


def _scaled(source: PriceSource | None, unit: int) -> Rate | None:
    if source is None:
        return None
    if isinstance(source, Decimal):
        return _whole(source, unit)
    tiers = sorted(((tier.start, _whole(tier.price, unit)) for tier in source.tiers), reverse=True)
    return Tiered(_whole(source.base, unit), tuple(tiers))


def _base(source: PriceSource | None) -> Decimal:
    """The price before any tier; an absent price is 0 (genai-prices charges nothing)."""
    if source is None:
        return Decimal(0)
    return source if isinstance(source, Decimal) else source.base


def _whole_nanos(usd: Decimal) -> int:
    """US dollars to nano-dollars, half up, exactly."""
    sign, digits, exponent = usd.as_tuple()
    assert isinstance(exponent, int), usd  # finite
    assert sign == 0, usd  # not negative
    nanos = int("".join(map(str, digits))) * 10**9
    if exponent >= 0:
        return nanos * int(10**exponent)
    return _rounded(nanos, int(10**-exponent))


def _rounded(numerator: int, denominator: int) -> int:
    """numerator / denominator to a whole number, half up (the contract's rounding of a
    cost to the nano); both not negative."""
    return (2 * numerator + denominator) // (2 * denominator)


def _ordered_counts(
    prompt: int, cached: int, cache_write: int, completion: int, reasoning: int
) -> tuple[int, int, int, int, int]:
    """Children clamped to their parents, as genai-prices requires (an upstream may report
    reasoning outside its completion tokens, or cache tokens outside its prompt); none
    negative. Branches, not min/max: this is on every call's path."""
    if prompt < 0:
        prompt = 0
    if cached < 0:
        cached = 0
    elif cached > prompt:
        cached = prompt
    if cache_write < 0:
        cache_write = 0
    elif cache_write > prompt - cached:
        cache_write = prompt - cached
    if completion < 0:
        completion = 0
    if reasoning < 0:
        reasoning = 0
    elif reasoning > completion:
        reasoning = completion
    return prompt, cached, cache_write, completion, reasoning


@dataclass(frozen=True, slots=True)
class _Tokens:
    """A call's counts under genai-prices' usage names (its `Usage` is duck-typed)."""

    input_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    output_tokens: int
    output_reasoning_tokens: int


@dataclass(frozen=True, slots=True)
class _Price:
    """A price genai-prices has: its card, and the price itself when only its own
    `calc_price` can price it (keys the card does not know)."""

    card: PriceCard
    exact: DataPrice | None


@dataclass(frozen=True, slots=True)
class _Schedule:
    """A model's prices over time: one price, or genai-prices' conditional prices (by start
    date, by time of day), each `_Price` kept by the identity of the price in force."""

    source: str  # for the start log
    fixed: _Price | None
    model: ModelInfo | None = None  # holds the prices `by_id` names: their ids stay theirs
    by_id: Mapping[int, _Price] | None = None

    def at(self, at_us: int) -> _Price:
        if self.fixed is not None:
            return self.fixed
        assert self.model is not None
        assert self.by_id is not None
        return self.by_id[id(self.model.get_prices(_EPOCH + timedelta(microseconds=at_us)))]


class Prices:
    """Each configured model's price (by its public name), and what a call costs."""

    def __init__(
        self, schedules: Mapping[str, _Schedule], sources: Mapping[str, str], version: str
    ) -> None:
        self._schedules = dict(schedules)
        self.sources = dict(sources)  # public name -> "unpriced", "own price", "genai-prices p/m"
        self.version = version  # the price data's, for the start log

    @classmethod
    def from_config(cls, config: Config) -> Prices:
        schedules: dict[str, _Schedule] = {}
        sources: dict[str, str] = {}
        data: _Data | None = None
        for model in config.models:
            provider = config.provider(model.provider)
            schedule: _Schedule | None
            if model.price is not None:
                price = model.price
                card = PriceCard.of(
                    input=price.input_per_mtok,
                    output=price.output_per_mtok,
                    cache_read=price.cached_input_per_mtok,
                    cache_write=price.cache_write_per_mtok,
                )
                schedule = _Schedule("own price", _Price(card, None))
            elif provider.kind == "mock" and provider.price_provider is None:
                schedule = None
            else:
                data = data or _Data.load()
                schedule = data.schedule(model, provider)
            if schedule is not None:
                schedules[model.name] = schedule
            sources[model.name] = schedule.source if schedule is not None else "unpriced"
        version = data.version if data is not None else "genai-prices not loaded"
        return cls(schedules, sources, version)

    def cost(
        self,
        model: str,
        at_us: int,
        *,
        prompt: int,
        cached: int,
        cache_write: int,
        completion: int,
        reasoning: int,
    ) -> tuple[int, CostSource]:
        """A call's cost in nano-dollars (rounded half up) and whether it was priced.

        `prompt` counts all input, cache reads and writes included; `completion` all
        output, reasoning included. `at_us`: the call's arrival, epoch microseconds.
        """
        schedule = self._schedules.get(model)
        if schedule is None:
            return 0, "unpriced"
        price = schedule.at(at_us)
        counts = _ordered_counts(prompt, cached, cache_write, completion, reasoning)
        if price.exact is None:
            return price.card.cost_nanos(*counts), "priced"
        usd = price.exact.calc_price(_Tokens(*counts))["total_price"]
        return _whole_nanos(usd), "priced"

    def reserve(
        self, model: str, at_us: int, prompt_estimate: int, output_estimate: int
    ) -> int | None:
        """What admission reserves, in nano-dollars; None when the model is unpriced."""
        schedule = self._schedules.get(model)
        if schedule is None:
            return None
        card = schedule.at(at_us).card
        return card.reserve_nanos(max(prompt_estimate, 0), max(output_estimate, 0))

    def listed(self, model: str) -> ListedPrice | None:
        """The model's price now, per million tokens; None when unpriced."""
        schedule = self._schedules.get(model)
        if schedule is None:
            return None
        now = datetime.now(UTC) - _EPOCH
        return schedule.at(now // timedelta(microseconds=1)).card.listed

    def describe(self) -> str:
        """The price data's version and each model's source, for the start log."""
        models = ", ".join(f"{name} ({source})" for name, source in self.sources.items())
        return f"{self.version}; {models}"


class _Data:
    """genai-prices' bundled data, imported on first need."""

    def __init__(self, snapshot: DataSnapshot, version: str) -> None:
        self._snapshot = snapshot
        self.version = f"genai-prices {version}"

    @classmethod
    def load(cls) -> _Data:
        from genai_prices import __version__
        from genai_prices.data_snapshot import get_snapshot

        return cls(get_snapshot(), __version__)

    def schedule(self, model: ModelConfig, provider: ProviderConfig) -> _Schedule | None:
        """genai-prices' prices of `model`, or None when it has none."""
        snapshot = self._snapshot
        data_provider = None
        if provider.price_provider is not None:  # checked when the config was loaded
            data_provider = snapshot.find_provider(None, provider.price_provider, None)
        elif provider.url:
            with contextlib.suppress(LookupError):  # a URL it does not know: by kind
                data_provider = snapshot.find_provider(None, None, provider.url)
        if data_provider is None and provider.kind in KIND_PROVIDERS:
            data_provider = snapshot.find_provider(None, KIND_PROVIDERS[provider.kind], None)
        if data_provider is None:
            return None
        try:
            _, info = snapshot.find_provider_model(model.upstream_name, data_provider, None, None)
        except LookupError:
            return None
        return schedule_of(info, f"genai-prices {data_provider.id}/{info.id}")


def schedule_of(info: ModelInfo, source: str) -> _Schedule:
    """A genai-prices model's prices, each made a card once."""
    from genai_prices.types import ModelPrice as DataPrice

    if isinstance(info.prices, DataPrice):
        return _Schedule(source, _price_of(info.prices))
    by_id = {id(conditional.prices): _price_of(conditional.prices) for conditional in info.prices}
    return _Schedule(source, None, info, by_id)


def _price_of(price: DataPrice) -> _Price:
    keys = {key for key, value in vars(price).items() if value is not None}
    card = PriceCard.of(
        input=price.input_mtok,
        output=price.output_mtok,
        cache_read=price.cache_read_mtok,
        cache_write=price.cache_write_mtok,
        reasoning=price.output_reasoning_mtok,
        request=price.requests_kcount,
    )
    return _Price(card, None if keys <= _CARD_KEYS else price)
