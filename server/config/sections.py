"""The sections around the core: who may call (`auth`), how often (`rate_limits`),
where usage is written (`usage`) and what telemetry says (`telemetry`)."""

from __future__ import annotations

import re
from decimal import Decimal
from functools import cached_property
from typing import Annotated, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, field_validator, model_validator

from server.config.base import NonNegativeFloat, PositiveInt, Strict, Usd

__all__ = [
    "MAX_BUDGET_NANOS",
    "MAX_BUDGET_USD",
    "AuthConfig",
    "BudgetConfig",
    "BudgetsConfig",
    "JwtConfig",
    "Period",
    "RateLimitConfig",
    "TelemetryConfig",
    "UsageConfig",
    "whole_nanos",
]

# a budget's calendar period in UTC: weeks start on Monday; `total` never resets
Period = Literal["daily", "weekly", "monthly", "total"]
# a budget's bound, in the config and the admin API alike: its nanos fit a BIGINT
MAX_BUDGET_NANOS = 2**63 - 1
MAX_BUDGET_USD = Decimal(MAX_BUDGET_NANOS).scaleb(-9)


def whole_nanos(usd: Decimal) -> int:
    """`usd` (finite, 0 to MAX_BUDGET_USD) in nano-dollars, exactly, by integers alone:
    the decimal context would round 1e-2000000000 to 0. ValueError past 9 decimal
    places. The one conversion of a budget's dollars, the config's and the admin API's."""
    _, digits, exponent = usd.as_tuple()
    coefficient, places = int("".join(map(str, digits))), -int(exponent)
    while places > 9 and coefficient and coefficient % 10 == 0:  # 1.0000000000 is 1
        coefficient, places = coefficient // 10, places - 1
    if not coefficient:
        return 0
    if places > 9:
        raise ValueError("at most 9 decimal places (budgets are kept in nano-dollars)")
    return coefficient * int(10 ** (9 - places))


_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

_HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
_PUBLIC_KEY_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class JwtConfig(Strict):
    secret: str | None = None
    public_key_file: str | None = None
    algorithms: tuple[str, ...] = ("HS256",)
    audience: str | None = None
    issuer: str | None = None
    tier_claim: str = "tier"
    require_exp: bool = True  # a token without `exp` would be valid forever

    @field_validator("secret")
    @classmethod
    def _secret_not_empty(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty (anyone could sign tokens)")
        return value

    @model_validator(mode="after")
    def _one_key(self) -> JwtConfig:
        if (self.secret is None) == (self.public_key_file is None):
            raise ValueError("set exactly one of secret and public_key_file")
        if any(alg.lower() == "none" for alg in self.algorithms):
            raise ValueError("algorithm 'none' is never accepted")
        fitting = _HMAC_ALGORITHMS if self.secret is not None else _PUBLIC_KEY_ALGORITHMS
        for alg in self.algorithms:
            if alg not in fitting:
                key = "secret" if self.secret is not None else "public_key_file"
                raise ValueError(
                    f"algorithms: {alg!r} does not fit a {key} (use {sorted(fitting)})"
                )
        return self


class AuthConfig(Strict):
    required: bool = False
    key_cache_s: NonNegativeFloat = 1.0
    jwt: JwtConfig | None = None
    admin_keys: tuple[Annotated[str, Field(min_length=1)], ...] = ()


class RateLimitConfig(Strict):
    backend: Literal["memory", "redis", "none"] = "memory"
    url: str | None = None
    prefix: Annotated[str, Field(min_length=1)] = "tandem:rl:"  # Redis key prefix

    @model_validator(mode="after")
    def _url_fits_backend(self) -> RateLimitConfig:
        if self.backend == "redis" and not self.url:
            raise ValueError("backend redis needs url")
        if self.backend != "redis" and self.url is not None:
            raise ValueError(f"url does not apply to backend {self.backend}")
        return self


class TelemetryConfig(Strict):
    log_format: Literal["json", "text"] = "json"
    access_log: bool = True
    otlp_endpoint: str | None = None  # OTLP/gRPC, e.g. http://127.0.0.1:4317
    service_name: Annotated[str, Field(min_length=1)] = "tandem"

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname or not parts.port:
                raise ValueError("expected http://HOST:PORT or https://HOST:PORT")
        return value


class UsageConfig(Strict):
    store: str = "sqlite:///tandem.db"
    flush_interval_ms: PositiveInt = 500
    batch_size: PositiveInt = 200
    max_pending: PositiveInt = 100_000  # records kept in memory while the store is down

    @field_validator("store", mode="before")
    @classmethod
    def _store_url(cls, value: object) -> object:
        if value is None:
            return "none"
        if isinstance(value, str) and not (
            value == "none" or value.startswith(("sqlite:///", "postgresql://", "postgres://"))
        ):
            raise ValueError("expected sqlite:///PATH, postgresql://..., or none")
        if isinstance(value, str) and value.startswith("postgres"):
            schema = parse_qs(urlsplit(value).query).get("search_path", [None])[0]
            if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
                raise ValueError("search_path must be one plain schema name ([a-z_][a-z0-9_]*)")
        return value


class ResponsesConfig(Strict):
    """The `/v1/responses` door's state: stored responses and sealed reasoning."""

    store_default: bool | None = None  # unset: true, or false with `usage.store: none`
    ttl_days: Annotated[float, Field(gt=0)] = 30.0  # a stored response lives this long
    # the key that seals reasoning into `encrypted_content` (any string; hashed to 32
    # bytes); unset: one generated once and kept in the usage store, shared by replicas
    seal_key: Annotated[str, Field(min_length=16)] | None = None


class BudgetConfig(Strict):
    """A cap on spend: `usd` over each `period`."""

    usd: Usd
    period: Period = "monthly"

    @field_validator("usd")
    @classmethod
    def _whole_nanos(cls, value: Decimal) -> Decimal:
        if value > MAX_BUDGET_USD:  # before any arithmetic: 1e30 would overflow the context
            raise ValueError(f"at most {MAX_BUDGET_USD} US dollars")
        whole_nanos(value)  # raises past 9 decimal places
        return value

    @cached_property
    def nanos(self) -> int:  # read by every budgeted call: converted once
        return whole_nanos(self.usd)


class BudgetsConfig(Strict):
    # a model with no price, called under a budget: allowed (costing 0), or refused (403)
    unpriced: Literal["allow", "deny"] = "allow"
